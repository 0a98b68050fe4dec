"""`lbbench run CONFIG`: placeholder until the runner lands."""

from __future__ import annotations

import argparse

from lbbench.errors import NotBuiltYet


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config")


def run(args: argparse.Namespace) -> int:
    raise NotBuiltYet("not yet")
