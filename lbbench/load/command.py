"""`lbbench load`: open-loop load generator."""

from __future__ import annotations

import argparse

from lbbench.errors import NotBuiltYet


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("args", nargs="*", help="not built yet")


def run(args: argparse.Namespace) -> int:
    raise NotBuiltYet("'lbbench load' is not built yet (issue 3: the load generator)")
