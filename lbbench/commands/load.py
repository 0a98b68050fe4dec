"""`lbbench load URL`: open-loop (or closed-loop) load against one loopback URL."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lbbench.errors import UserError
from lbbench.results.atomic import replace_atomically, write_text_atomically

if TYPE_CHECKING:
    from lbbench.load.generator import LoadResult
    from lbbench.load.spec import LoadSpec
    from lbbench.model.load import RateStep


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("url", metavar="URL", help="http://IP:PORT/path on 127.0.0.0/8, or http://NAME:PORT/path with --dns")
    p.add_argument("-R", "--rate", default="100", metavar="R",
                   help="requests per second (open loop): 200, 200/s or 200rps (wrk2's -R)")
    p.add_argument("-d", "--duration", default="10s", metavar="S", help="how long to send, e.g. 8s or 500ms")
    p.add_argument("--arrivals", choices=("poisson", "constant"), default="poisson",
                   help="gaps between intended sends: exponential (default) or even")
    p.add_argument("--step", action="append", default=[], metavar="AT:RATE[:ramp]",
                   help="change the rate at time AT (jump, or linear ramp to it with ':ramp'); repeatable")
    p.add_argument("--connections", default="close", metavar="close|keepalive:K",
                   help="a new TCP connection per request (default), or a pool of K persistent ones (either "
                        "is sent by the native C client where it is built; LBBENCH_PURE_CLIENT=1 for the "
                        "Python one)")
    p.add_argument("-c", dest="pool", type=int, metavar="K",
                   help="wrk2's -c: a pool of K persistent connections (the same as --connections keepalive:K)")
    p.add_argument("--workers", type=int, default=0, metavar="W", help="worker processes (default: auto)")
    p.add_argument("--closed-loop", type=int, default=0, metavar="N",
                   help="closed loop with N users instead of open-loop arrivals")
    p.add_argument("--think-time", default="0s", metavar="S", help="closed loop: pause between a user's requests")
    p.add_argument("--seed", type=int, default=0, help="seed of the arrival schedule")
    p.add_argument("--timeout", default="10s", metavar="S", help="give up on a request this long after its "
                   "intended send time")
    p.add_argument("--connect-timeout", default="1s", metavar="S", help="give up on a TCP connect after this")
    p.add_argument("--max-lateness", default="2ms", metavar="S",
                   help="lateness p99 above this marks the generator as saturated")
    p.add_argument("--no-rows", action="store_true", help="keep histograms only, not one row per request")
    p.add_argument("--allow-remote", action="store_true",
                   help="accept a target outside 127.0.0.0/8 (only for running inside a real cluster; "
                        "lbbench is loopback-only otherwise)")
    p.add_argument("--part", default="0/1", metavar="I/P",
                   help="send only part I of P of the schedule (every P-th request from the I-th): several "
                   "generators, e.g. the pods of a Kubernetes Job, split one run; merge with 'lbbench merge'")
    p.add_argument("--start-at", type=float, metavar="UNIX",
                   help="t=0 on the wall clock (unix seconds), so that several generators start together")
    p.add_argument("--dns", metavar="IP:PORT", help="DNS server to resolve a name in URL (the cluster DNS)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the text summary")
    p.add_argument("--out", metavar="DIR", help="write requests.parquet and summary.json into DIR")
    p.add_argument("--check", action="append", default=[], metavar="EXPR",
                   help="a pass/fail threshold on the target, repeatable: e.g. '*.p99 < 200ms', '*.errors_pct < 1' "
                   "(metrics as in configs/README.md); exit code 3 when one fails")


def parse_rate(text: str) -> float:
    """'200', '200/s', '200rps' -> 200.0 (requests per second); the range is the spec's to check."""
    value = str(text).strip().removesuffix("/s").removesuffix("rps").strip()
    try:
        return float(value)
    except ValueError:
        raise ValueError(f"--rate: expected requests per second such as 200 or 200/s, got {text!r}") from None


def run(args: argparse.Namespace) -> int:
    from lbbench.load.generator import resolve_workers, run_load
    from lbbench.report.checks import parse_all

    checks = parse_all(args.check, "--check")
    try:
        spec = build_spec(args)
        resolve_workers(spec)  # refuses impossible combinations before any process starts
        if args.start_at is not None and not math.isfinite(args.start_at):
            raise ValueError(f"--start-at must be a unix time in seconds, got {args.start_at}")
    except ValueError as e:
        raise UserError(str(e)) from None
    from lbbench.results.writer import writable_folder  # pandas: only when a command runs, not for every child

    out = writable_folder(Path(args.out)) if args.out else None  # before any request is sent

    result = run_load(spec, start_at_unix=args.start_at)
    document = result_document(spec, result)
    # the summary first: a failure to write the files must not lose what was measured
    print(json.dumps(document["summary"], indent=2) if args.json else result.summary.format_text())
    if out is not None:
        write_out(out, result, document)
        if not args.json:
            print(f"rows and summary written to {out}")
    if result.summary.generator_saturated:
        print(f"lbbench load: warning: generator saturated: {result.summary.saturation_reason}", file=sys.stderr)
    if result.summary.stopped:
        return 130
    from lbbench.report.checks import check_rows, say

    failed = say(check_rows(result.rows, checks, args.url), "load") if checks else 0
    if result.summary.ok == 0:
        print(f"lbbench load: error: no request succeeded ({result.summary.requests} sent)", file=sys.stderr)
        return 1
    return failed


def build_spec(args: argparse.Namespace) -> LoadSpec:
    from lbbench.load.spec import LoadSpec
    from lbbench.load.target import parse_url
    from lbbench.model.addresses import parse_hostport
    from lbbench.model.load import ConnectionMode
    from lbbench.model.servicetime import parse_duration

    dns = parse_hostport(args.dns) if args.dns else None
    part = parse_part(args.part)
    target = parse_url(args.url, dns, allow_remote=args.allow_remote)
    return LoadSpec(
        target=target.addr, path=target.path, host_header=target.host_header,
        rate_rps=parse_rate(args.rate), duration_s=parse_duration(args.duration), arrivals=args.arrivals,
        steps=tuple(parse_step(s) for s in args.step),
        connections=ConnectionMode.parse(f"keepalive:{args.pool}" if args.pool else args.connections),
        workers=args.workers, closed_loop_users=args.closed_loop, think_time_s=parse_duration(args.think_time),
        connect_timeout_s=parse_duration(args.connect_timeout), timeout_s=parse_duration(args.timeout),
        seed=args.seed, record_rows=not args.no_rows, lateness_threshold_s=parse_duration(args.max_lateness),
        part_index=part[0], part_count=part[1], allow_remote=args.allow_remote,
    )


def parse_part(text: str) -> tuple[int, int]:
    index, sep, count = text.partition("/")
    try:
        i, n = int(index), int(count)
    except ValueError:
        i, n = -1, 0
    if not sep or not 0 <= i < n:
        raise ValueError(f"--part expects I/P with 0 <= I < P (e.g. 0/3), got {text!r}")
    return i, n


def parse_step(text: str) -> RateStep:
    from lbbench.model.load import RateStep
    from lbbench.model.servicetime import parse_duration

    parts = text.split(":")
    if len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] != "ramp"):
        raise ValueError(f"--step expects AT:RATE or AT:RATE:ramp (e.g. 5s:800), got {text!r}")
    try:
        rate = float(parts[1])
    except ValueError:
        raise ValueError(f"--step rate must be a number, got {parts[1]!r}") from None
    return RateStep(parse_duration(parts[0]), rate, ramp=len(parts) == 3)


def result_document(spec: LoadSpec, result: LoadResult) -> dict[str, Any]:
    return {
        "summary": result.summary.to_dict(),
        "spec": spec.to_dict(),
        "latency_histogram": result.histogram.to_dict(),
        "lateness_histogram": result.lateness.to_dict(),
    }


def write_out(out: Path, result: LoadResult, document: dict[str, Any]) -> None:
    summary = {**document["summary"], "spec": document["spec"],
               "latency_histogram": document["latency_histogram"],
               "lateness_histogram": document["lateness_histogram"]}
    try:  # each file whole or not at all (a part merged later must never be a truncated one)
        out.mkdir(parents=True, exist_ok=True)
        write_text_atomically(out / "summary.json", json.dumps(summary, indent=2) + "\n")
        replace_atomically(out / "requests.parquet", lambda tmp: result.rows.to_parquet(tmp, index=False))
    except OSError as e:
        raise UserError(f"--out {out}: could not write the results: {e}") from None
