"""`lbbench theory`: queueing-theory predictions."""

from __future__ import annotations

import argparse

from lbbench.errors import NotBuiltYet


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("args", nargs="*", help="not built yet")


def run(args: argparse.Namespace) -> int:
    raise NotBuiltYet("'lbbench theory' is not built yet (issue 7: queueing theory)")
