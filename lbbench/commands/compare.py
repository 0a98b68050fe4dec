"""`lbbench compare A B`: two results folders side by side per front end, with deltas and one CDF."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lbbench.errors import UserError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("a", type=Path, metavar="DIR_A", help="results folder A (the baseline)")
    p.add_argument("b", type=Path, metavar="DIR_B", help="results folder B (deltas are B - A)")
    p.add_argument(
        "--out",
        type=Path,
        help="where to write compare.md, compare.json, latency_cdf.png (default: ./compare-<A>-vs-<B>/)",
    )
    p.add_argument("--fail-if-worse", type=float, metavar="PCT",
                   help="regression gate: exit 3 when B is worse than A by more than PCT percent on a latency, "
                   "error or failover metric (beyond both 95%% intervals when known), or has errors where A had none")


def run(args: argparse.Namespace) -> int:
    from lbbench.report.compare import compare, default_out, table, worse, write_compare
    from lbbench.report.markdown import plain_table

    c = compare(args.a, args.b)
    print(f"A: {c.a.folder}\nB: {c.b.folder}\n")
    for note in c.notes:
        print(f"note: {note}", file=sys.stderr)
    for fc in c.frontends:
        print(plain_table(table(fc)))
        print()
    if not c.frontends:
        print("neither folder has a measured front end")
    out = args.out or default_out(args.a, args.b)
    try:
        paths = write_compare(c, out)
    except OSError as e:
        raise UserError(f"cannot write the comparison into {out}: {e}") from None
    print(f"json: {paths.json}")
    if paths.cdf is not None:
        print(f"plot: {paths.cdf}")
    print(paths.markdown)
    if args.fail_if_worse is None:
        return 0
    regressions = worse(c, args.fail_if_worse)
    for line in regressions:
        print(f"lbbench compare: worse by more than {args.fail_if_worse:g}%: {line}", file=sys.stderr)
    return 3 if regressions else 0
