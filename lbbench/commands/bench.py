"""`lbbench bench`: lbbench's own speed against HAProxy, nginx, httpd, wrk and the kernel, in one run.

Each group's peers are measured side by side, in interleaved rounds, with the same client.
The first figure is CPU seconds per 10k requests against HAProxy's (req/s compares cores as
much as code), the req/s ratios the second; each peer's row counts the SYN retransmits of the
namespace during its rounds. userspace-dnat and l7-proxy run one worker process per CPU, like
HAProxy's threads. The output is a table, `bench.json` (schema lbbench.bench/1: every figure with its spread,
the ratios, machine metadata) and `bench.png`. Peers that cannot run here are skipped with
the reason. When kernel front ends are wanted, the run re-executes itself inside lbbench's
private user+net namespace (as `lbbench run` does), so every peer shares that loopback.
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from lbbench.errors import UserError

if TYPE_CHECKING:
    from lbbench.bench.suite import BenchSettings

GROUP_HELP = "l4,l7,generator,cost,scale"
DEFAULT_RESULTS = Path("results")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print bench.json to stdout instead of the tables")
    p.add_argument("--duration", default="2s", help="seconds per measurement (default 2s; e.g. 500ms, 5)")
    p.add_argument("--repeats", type=int, default=3, help="interleaved rounds per figure (default 3; >= 3 for "
                   "a meaningful spread)")
    p.add_argument("--out", type=Path, help="folder for bench.json and bench.png (default results/bench-<UTC>/)")
    p.add_argument("--only", default=GROUP_HELP, help=f"comma-separated groups (default all: {GROUP_HELP}); "
                   "cost is derived from l4 and l7, so it runs both; generator: lbbench's load generator "
                   "against wrk on nginx, keep-alive (open loop, searched; and closed loop) and a new "
                   "connection per request (close mode, searched, against wrk with Connection: close)")
    p.add_argument("--backend", choices=("pod", "nginx"), default="pod",
                   help="what the L4/L7 peers forward to: one lbbench pod with zero service time (default), "
                   "or nginx answering 200 from one process (so the front end, not the pod, is the bottleneck)")
    p.add_argument("--connections", type=int, default=16, help="keep-alive connections of the client (default 16)")
    p.add_argument("--no-netns", action="store_true", help="do not enter a private network namespace "
                   "(kernel-nftables and the nft figures are then skipped)")


def settings_from_args(args: argparse.Namespace) -> BenchSettings:
    from lbbench.bench.peers import ClientSettings
    from lbbench.bench.suite import BenchSettings
    from lbbench.model.servicetime import parse_duration

    try:
        duration = parse_duration(args.duration)
    except ValueError as e:
        raise UserError(f"--duration: {e}") from None
    if args.connections < 1:
        raise UserError(f"--connections must be >= 1, got {args.connections}")
    groups = tuple(g.strip() for g in args.only.split(",") if g.strip())
    try:
        return BenchSettings(duration_s=duration, repeats=args.repeats, groups=groups, backend=args.backend,
                             client=ClientSettings(connections=args.connections))
    except ValueError as e:
        raise UserError(f"bad option: {e}") from None


def default_out() -> Path:
    return DEFAULT_RESULTS / f"bench-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}"


def run(args: argparse.Namespace) -> int:
    from lbbench.system.netns import in_private_netns, netns_unavailable_reason

    settings = settings_from_args(args)
    out: Path = args.out or default_out()
    wants_kernel = "l4" in settings.layers or "scale" in settings.groups
    if wants_kernel and not args.no_netns and not in_private_netns() and netns_unavailable_reason() is None:
        return _reexec_in_netns(out)
    return _run_here(settings, out, args.json)


def _run_here(settings: BenchSettings, out: Path, as_json: bool) -> int:
    import json

    import uvloop
    from rich.console import Console

    from lbbench.bench import output
    from lbbench.bench.suite import run_suite

    err = Console(stderr=True)
    started = datetime.now(UTC)

    def log(msg: str) -> None:
        err.print(f"[dim]{(datetime.now(UTC) - started).total_seconds():6.1f} s[/dim] {msg}", highlight=False)

    doc = uvloop.run(run_suite(settings, sys.argv[1:], log))
    output.write_json(doc, out / "bench.json")
    output.write_plot(doc, out / "bench.png")
    if as_json:
        print(json.dumps(doc, indent=2))
    else:
        # Not a terminal (a log, CI): wide enough that the tables do not wrap.
        output.print_report(doc, Console() if sys.stdout.isatty() else Console(width=150))
    err.print(f"wrote {out / 'bench.json'} and {out / 'bench.png'}")
    return 0


def _reexec_in_netns(out: Path) -> int:
    from lbbench.system.netns import rerun_inside

    return rerun_inside("bench-in-netns", str(out))
