"""`lbbench report DIR`: regenerate plots and reports from a results folder, and check its summary.

The per-front-end numbers are recomputed from requests.parquet + events.csv with the functions
`lbbench run` used and printed; any disagreement with summary.json is a warning and exit code 1.
A failed check (the run's [[checks]] and --check) is exit code 3.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lbbench.errors import UserError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("folder", type=Path, metavar="DIR", help="a results folder written by 'lbbench run'")
    p.add_argument(
        "--no-check",
        action="store_true",
        help="do not recompute the summary from requests.parquet + events.csv",
    )
    p.add_argument("--check", action="append", default=[], metavar="EXPR",
                   help="a pass/fail threshold, repeatable, evaluated with the run's [[checks]], e.g. "
                   "'*.errors_pct < 1' or 'l7-proxy.p99 < 200ms'; exit code 3 when one fails")


def run(args: argparse.Namespace) -> int:
    from lbbench.report import load_results, write_report
    from lbbench.report.checks import parse_all, say
    from lbbench.report.markdown import plain_table
    from lbbench.report.tables import frontend_table
    from lbbench.report.verify import check

    extra = parse_all(args.check, "--check")
    results = load_results(args.folder)
    if not results.complete:
        print(
            f"note: {args.folder}: this run was cut short (complete: false); reporting what was measured",
            file=sys.stderr,
        )
    problems: list[str] = []
    if not args.no_check and results.frontends:
        fresh, problems = check(results)
        print(f"recomputed from requests.parquet + events.csv ({args.folder}):")
        print(plain_table(frontend_table(results, fresh)))
        print()
        for p in problems:
            print(f"warning: summary.json disagrees with the rows: {p}", file=sys.stderr)
    for name, reason in results.skipped.items():
        print(f"skipped {name}: {reason}")
    try:
        paths = write_report(results.folder, results, extra)
    except OSError as e:  # a read-only copy, a full disk: say so in one line
        raise UserError(f"cannot write the report into {results.folder}: {e}") from None
    print(f"markdown: {paths.markdown}")
    print(paths.html)
    return say(paths.checks, "report") or (1 if problems else 0)
