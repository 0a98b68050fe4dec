"""Placeholder: built in its own issue."""

from __future__ import annotations

import argparse

from lbbench.errors import NotBuiltYet


def add_serve_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("args", nargs="*", help="not built yet")


def serve_command(args: argparse.Namespace) -> int:
    raise NotBuiltYet("'lbbench serve proxy' is not built yet")
