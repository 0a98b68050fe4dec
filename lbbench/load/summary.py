"""The summary of one load run: requested next to actual, honest about the generator itself.

Latency percentiles are over successful requests (latency = done - intended send time);
errors are counted by kind next to them. Lateness (issued - intended) and the workers' CPU
say whether the generator kept up; if not, `generator_saturated` is true with the reason,
because then the latencies may be the generator's rather than the target's.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from lbbench.load.client import ERROR_KINDS
from lbbench.load.histogram import LogHistogram

SCHEMA = "lbbench.load.summary/1"
CPU_SATURATED = 0.90

Stats = dict[str, float | None]


def _num(x: float) -> float | None:
    return None if math.isnan(x) or math.isinf(x) else float(x)


def latency_stats(h: LogHistogram) -> Stats:
    p50, p90, p99, p999 = h.quantiles([0.5, 0.9, 0.99, 0.999])
    return {"mean": _num(h.mean), "p50": _num(p50), "p90": _num(p90), "p99": _num(p99), "p999": _num(p999),
            "max": _num(h.max) if h.count else None}


def short_stats(h: LogHistogram) -> Stats:
    p50, p99 = h.quantiles([0.5, 0.99])
    return {"p50": _num(p50), "p99": _num(p99), "max": _num(h.max) if h.count else None}


@dataclass(frozen=True)
class LoadSummary:
    target: str
    path: str
    mode: str  # "open" | "closed"
    arrivals: str | None  # None in closed loop
    connections: str
    workers: int
    closed_loop_users: int
    think_time_s: float
    seed: int
    requested_rps: float | None  # None in closed loop: the users' pace sets the rate
    achieved_rps: float  # requests sent / actual duration
    ok_rps: float
    requested_duration_s: float
    actual_duration_s: float
    scheduled: int
    requests: int  # sent (issued)
    completed: int
    ok: int
    ok_while_sending: int  # answered 2xx by the end of the schedule (a backlog drained later is not in it)
    failed: int
    aborted: int  # in flight when a stop request cut the run short; not in the rows
    errors: dict[str, int]
    statuses: dict[str, int]
    latency_s: Stats
    lateness_s: Stats
    pool_wait_s: Stats | None  # keep-alive: sent - issued, waiting for a free connection
    pool_wait_own_s: Stats | None  # its part after the answer that freed the connection had arrived: the client's
    worker_cpu_s: tuple[float, ...]
    worker_cpu_fraction: tuple[float, ...]  # busy: the native engine's polling for its next send left out
    lateness_threshold_s: float
    generator_saturated: bool
    saturation_reason: str | None
    complete: bool
    stopped: bool
    warnings: tuple[str, ...] = ()
    start_at_unix: float | None = None  # t=0 on the wall clock (labels and cross-machine checks only)
    part: str = "0/1"  # which part of the schedule this process sent (see LoadSpec.part_index)
    worker_poll_cpu_s: tuple[float, ...] = ()  # of worker_cpu_s: the native engine polling for its next send
    schema: str = SCHEMA

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["worker_cpu_s"] = list(self.worker_cpu_s)
        d["worker_cpu_fraction"] = [_num(x) for x in self.worker_cpu_fraction]
        d["worker_poll_cpu_s"] = list(self.worker_poll_cpu_s)
        d["warnings"] = list(self.warnings)
        return d

    def format_text(self) -> str:
        return "\n".join(_text_lines(self))


def saturation(lateness: LogHistogram, cpu_fraction: tuple[float, ...], threshold_s: float) -> str | None:
    """Why the generator itself was the bottleneck, or None."""
    reasons = []
    if lateness.count:
        p99 = lateness.quantile(0.99)
        if p99 > threshold_s:
            reasons.append(f"send lateness p99 {p99 * 1e3:.2f} ms > {threshold_s * 1e3:g} ms")
    for w, frac in enumerate(cpu_fraction):
        if frac > CPU_SATURATED:
            reasons.append(f"worker {w} used {frac:.0%} CPU while sending (> {CPU_SATURATED:.0%})")
    return "; ".join(reasons) or None


def all_errors(counts: dict[str, int]) -> dict[str, int]:
    return {kind: int(counts.get(kind, 0)) for kind in ERROR_KINDS}


# -- text ----------------------------------------------------------------------------------------
def _ms(x: float | None) -> str:
    if x is None:
        return "-"
    ms = x * 1e3
    return f"{ms:.3g} ms" if abs(ms) < 100 else f"{ms:.0f} ms"


def _text_lines(s: LoadSummary) -> list[str]:
    mode = (f"open loop, {s.arrivals} arrivals" if s.mode == "open"
            else f"CLOSED loop, {s.closed_loop_users} users, think {s.think_time_s:g} s")
    req_rate = "-" if s.requested_rps is None else f"{s.requested_rps:.1f}"
    lines = [
        f"target http://{s.target}{s.path}: {mode}, connections {s.connections}, "
        f"{s.workers} worker(s), seed {s.seed}" + ("" if s.part == "0/1" else f", part {s.part}"),
        f"{'':14}{'requested':>12}{'actual':>12}",
        f"{'rate (rps)':14}{req_rate:>12}{s.achieved_rps:>12.1f}",
        f"{'duration (s)':14}{s.requested_duration_s:>12.3f}{s.actual_duration_s:>12.3f}",
        f"requests: {s.requests} sent, {s.ok} ok, {s.failed} failed"
        + (f", {s.aborted} aborted in flight" if s.aborted else "")
        + f"   (ok {s.ok_rps:.1f} rps)",
    ]
    if s.ok - s.ok_while_sending > 0.01 * s.ok:  # a backlog: the target (or the client) fell behind the schedule
        lines.append(f"answered after the schedule ended: {s.ok - s.ok_while_sending} "
                     f"({s.ok_while_sending / s.requested_duration_s:.1f} ok rps while sending)")
    errs = ", ".join(f"{k} {n}" for k, n in s.errors.items() if n)
    if errs:
        lines.append(f"errors: {errs}")
    if s.statuses:
        lines.append("statuses: " + ", ".join(f"{code} x{n}" for code, n in sorted(s.statuses.items())))
    lat = s.latency_s
    lines.append("latency (ok, from intended send): " + "  ".join(
        f"{k} {_ms(lat[k])}" for k in ("mean", "p50", "p90", "p99", "p999", "max")))
    late = s.lateness_s
    lines.append(f"lateness (generator: issued - intended): p50 {_ms(late['p50'])}  p99 {_ms(late['p99'])}  "
                 f"max {_ms(late['max'])}  (threshold {_ms(s.lateness_threshold_s)})")
    if s.pool_wait_s is not None and s.pool_wait_s["max"]:
        pw = s.pool_wait_s
        lines.append(f"waited for a keep-alive connection: p50 {_ms(pw['p50'])}  p99 {_ms(pw['p99'])}  "
                     f"max {_ms(pw['max'])}")
        if (own := s.pool_wait_own_s) is not None:
            lines.append(f"  of which the client's own (its connection's answer had arrived, unread): "
                         f"p99 {_ms(own['p99'])}  max {_ms(own['max'])}")
    cpu = "  ".join(f"w{i} {'-' if math.isnan(frac) else f'{frac:.0%}'} ({sec:.2f} s)"
                    for i, (frac, sec) in enumerate(zip(s.worker_cpu_fraction, s.worker_cpu_s, strict=True)))
    lines.append(f"generator CPU while sending (busy): {cpu}")
    if any(s.worker_poll_cpu_s):
        polls = "  ".join(f"w{i} {sec:.2f} s" for i, sec in enumerate(s.worker_poll_cpu_s))
        lines.append(f"  of which polling for the next send (native client; in the CPU s, not busy): {polls}")
    if s.stopped:
        lines.append("STOPPED early on request: the run is incomplete")
    for w in s.warnings:
        lines.append(f"WARNING: {w}")
    if s.generator_saturated:
        lines.append(f"WARNING: the load generator was saturated ({s.saturation_reason}); " + _advice(s))
    return lines


def _advice(s: LoadSummary) -> str:
    """What to do about it: more workers only help when a worker ran out of CPU."""
    if any(frac > CPU_SATURATED for frac in s.worker_cpu_fraction):
        return "latencies above may be the generator's, not the target's. Use more --workers or a lower --rate."
    late, p50 = s.lateness_s.get("p99"), s.latency_s.get("p50")
    share = f" ({late / p50:.0%} of the p50 latency)" if late and p50 else ""
    return (f"its workers had CPU to spare, so the machine woke them late{share}: the latencies include that "
            "delay (they are measured from the intended send time); more --workers would not help.")
