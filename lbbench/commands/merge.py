"""`lbbench merge PARTS... --out DIR`: a distributed run's generator parts -> one results folder.

PARTS are `kubectl logs` of load Job pods (armored blocks, see lbbench.k8s.parts) or folders
written by `lbbench load --part I/P --out DIR`. Rows are concatenated, histograms added; every
percentile is computed from the merged data, never averaged. `lbbench report DIR` then works.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lbbench.errors import UserError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("parts", nargs="+", type=Path, metavar="PART",
                   help="a load Job pod's log (kubectl logs) or a folder written by 'lbbench load --out'")
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="the results folder to write")
    p.add_argument("--events", type=Path, action="append", default=[], metavar="CSV",
                   help="failure timeline as run (faults.sh output); repeatable")
    p.add_argument("--config", type=Path, metavar="TOML",
                   help="the config the parts ran (copied in; enables the theory section)")
    p.add_argument("--frontend", default="kube-proxy",
                   help="front-end label for part folders that carry none (default kube-proxy)")
    p.add_argument("--name", help="experiment name in the report (default: the config's, else 'k8s')")
    p.add_argument("--partial", action="store_true",
                   help="merge even if parts are missing (the folder is marked incomplete)")


def run(args: argparse.Namespace) -> int:
    from lbbench.config.parse import load_config
    from lbbench.k8s.merge import merge_parts, merged_contents, read_all, read_events
    from lbbench.results.writer import writable_folder, write_folder
    from lbbench.run.phase import phase_rates

    if (args.out / "summary.json").exists():
        raise UserError(f"{args.out} already holds results (summary.json); choose another --out")
    config = load_config(args.config) if args.config else None
    parts = read_all(args.parts, args.frontend)
    phases = merge_parts(parts, args.partial, phase_rates(config) if config else ())
    name = args.name or (config.name if config else "k8s")
    contents = merged_contents(phases, read_events(args.events), config, name)
    failures = write_folder(writable_folder(args.out), contents)
    summary = contents.summary
    print(f"{'front end':14}{'rate':>9}{'rep':>5}{'parts':>8}{'requests':>10}{'ok':>9}{'p50 ms':>9}{'p99 ms':>9}")
    for ph, entry in zip(phases, summary["phases"], strict=True):
        lat = entry["latency_s"]
        print(f"{ph.frontend:14}{ph.rate_rps:>9g}{ph.repeat:>5}{len(ph.parts):>4}/{ph.count:<3}"
              f"{entry['requests']:>10}{entry['ok']:>9}{_ms(lat['p50']):>9}{_ms(lat['p99']):>9}")
    for note in summary["notes"]:
        print(f"note: {note}")
    for failure in failures:
        print(f"error: could not write {failure}", file=sys.stderr)
    if failures:
        return 1
    print(f"merged {len(parts)} part(s) into {args.out}; next: lbbench report {args.out}")
    return 0 if summary["complete"] else 1


def _ms(x: float | None) -> str:
    return "-" if x is None else f"{x * 1e3:.2f}"
