"""lbbench's load generator against wrk, both against the same fast target (nginx `return 200`).

wrk is closed-loop: its figure is simply the requests/s it reaches. lbbench's generator is
open-loop, so its figure is the highest *scheduled* rate it sustains honestly:
- send lateness p99 under 2 ms (the issue's criterion: requests go out on time);
- the client's own wait for a keep-alive connection p99 under 2 ms: a request that finds every
  connection busy waits; the part of that wait after the answer that freed its connection had
  reached the socket (the kernel's receive stamp) is the client's, the part before is the
  target's. The target's stalls are not the generator's (wrk, closed loop, simply sends less
  while the target stalls), so they do not fail the generator; the whole wait is reported;
- at least 99% of the scheduled requests answered while the schedule ran (a backlog that drains
  only after it, however short the requests' waits, is a rate the pair did not sustain);
- at least 99% of the scheduled requests answered 200, and at least 95% of the rate issued.
That rate is searched (bounded: a few probes per round, geometric steps, then bisection to within
10%). Both sides use the same number of keep-alive connections and the same number of threads /
worker processes.

With a new connection per request, the same search runs lbbench's generator in close mode against wrk
with `Connection: close` on the same target (wrk reconnects after every answer): reported, no goal.

The like-for-like figure is lbbench's generator in closed loop (as many users as wrk has
connections, no think time): it measures the client's speed, where the open-loop figure
also measures how punctually the OS schedules it (on a busy machine, the lateness bound
is hit long before the worker's CPU is: profiled at 4k req/s, 37% CPU, p99 2.4 ms).
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from lbbench.model.addresses import HostPort

LATENESS_P99_MAX_S = 0.002
OWN_WAIT_P99_MAX_S = 0.002  # a free connection (its answer arrived) used within 2 ms: the client kept up reading
OK_FRACTION_MIN = 0.99
ACHIEVED_FRACTION_MIN = 0.95
ANSWERED_FRACTION_MIN = 0.99  # answered while the schedule ran: no backlog left for after it
PRECISION = 1.10  # stop bisecting when the failing rate is within 10% of the passing one
FIRST_RATE_RPS = 10000.0  # the generator's documented per-worker keep-alive rate (RPS_PER_WORKER)
FIRST_CLOSE_RATE_RPS = 2000.0  # a new connection per request costs the client several times more

if TYPE_CHECKING:
    from lbbench.load.spec import LoadSpec
    from lbbench.load.summary import LoadSummary


@dataclass(frozen=True)
class Probe:
    rate_rps: float
    achieved_rps: float
    ok_fraction: float
    lateness_p99_ms: float | None
    passed: bool
    why: str  # "" when passed
    own_wait_p99_ms: float | None = None  # the client's part of the wait for a connection (judged)
    pool_wait_p99_ms: float | None = None  # the whole wait, the target's part included (reported)
    answered_fraction: float | None = None  # of the scheduled, answered 2xx while the schedule ran

    def to_dict(self) -> dict[str, Any]:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in asdict(self).items()}


@dataclass(frozen=True)
class Waits:
    """A keep-alive run's connection waits (p99, s) and its answers while the schedule ran."""

    own_p99_s: float = 0.0
    total_p99_s: float | None = None
    ok_while_sending: int | None = None  # None: all of them


def _ms_or_none(x: float | None) -> float | None:
    return x * 1e3 if x is not None and math.isfinite(x) else None


def judge(rate_rps: float, achieved_rps: float, scheduled: int, ok: int, lateness_p99_s: float | None,
          waits: Waits = Waits()) -> Probe:
    """Whether one run at `rate_rps` was sustained honestly, and if not why."""
    ok_fraction = ok / scheduled if scheduled else 0.0
    answered = (ok if waits.ok_while_sending is None else waits.ok_while_sending) / scheduled if scheduled else 0.0
    why = []
    if lateness_p99_s is None or not math.isfinite(lateness_p99_s):
        why.append("no lateness measured")
    elif lateness_p99_s >= LATENESS_P99_MAX_S:
        why.append(f"lateness p99 {lateness_p99_s * 1e3:.2f} ms >= {LATENESS_P99_MAX_S * 1e3:g} ms")
    if not waits.own_p99_s < OWN_WAIT_P99_MAX_S:  # NaN fails too
        why.append(f"its own wait for a connection p99 {waits.own_p99_s * 1e3:.2f} ms >= "
                   f"{OWN_WAIT_P99_MAX_S * 1e3:g} ms")
    if answered < ANSWERED_FRACTION_MIN:
        why.append(f"only {answered:.1%} answered while the schedule ran (a backlog)")
    if ok_fraction < OK_FRACTION_MIN:
        why.append(f"only {ok_fraction:.1%} of scheduled requests ok")
    if achieved_rps < ACHIEVED_FRACTION_MIN * rate_rps:
        why.append(f"achieved {achieved_rps:,.0f} of {rate_rps:,.0f} req/s")
    return Probe(rate_rps, achieved_rps, ok_fraction, _ms_or_none(lateness_p99_s), not why, "; ".join(why),
                 _ms_or_none(waits.own_p99_s), _ms_or_none(waits.total_p99_s), answered)


ProbeFn = Callable[[float], Awaitable[Probe]]


async def search_max_rate(probe: ProbeFn, start_rps: float, factor: float, max_probes: int,
                          cap_rps: float) -> tuple[float, list[Probe]]:
    """Highest passing rate found in at most `max_probes` probes (0.0 if none passed).

    Steps up (or down) by `factor` until a pass and a failure bracket the answer, then
    bisects geometrically until the bracket is within PRECISION. Never probes above `cap_rps`.
    """
    if start_rps <= 0 or factor <= 1 or max_probes < 1 or cap_rps <= 0:
        raise ValueError("search_max_rate needs start_rps > 0, factor > 1, max_probes >= 1, cap_rps > 0")
    best, lowest_fail = 0.0, math.inf
    rate = min(start_rps, cap_rps)
    probes: list[Probe] = []
    retried: set[float] = set()
    while len(probes) < max_probes:
        p = await probe(rate)
        probes.append(p)
        if not p.passed and rate not in retried and len(probes) < max_probes:
            # one scheduling stall on a shared machine fails a probe for good; a real limit fails twice
            retried.add(rate)
            p = await probe(rate)
            probes.append(p)
        if p.passed:
            best = max(best, rate)
        else:
            lowest_fail = min(lowest_fail, rate)
        if lowest_fail == math.inf:
            if rate >= cap_rps:
                break  # passes at the cap: the cap is the answer
            rate = min(rate * factor, cap_rps)
        elif best == 0.0:
            rate = rate / factor
        elif lowest_fail / best <= PRECISION:
            break
        else:
            rate = math.sqrt(best * lowest_fail)
    return best, probes


async def _run_once(spec: LoadSpec) -> LoadSummary:
    """One generator run that starts as soon as its workers are ready."""
    from lbbench.load.generator import LoadGenerator

    gen = LoadGenerator(spec)
    try:
        await gen.prepare()
        await gen.start(time.monotonic() + 0.2)
        return (await gen.result()).summary
    finally:
        await gen.aclose()


async def lbbench_probe(target: HostPort, rate_rps: float, duration_s: float, connections: int | None,
                        workers: int, seed: int) -> Probe:
    """One open-loop run of lbbench's generator at `rate_rps`, judged: over `connections` keep-alive
    connections, or a new connection per request (None)."""
    from lbbench.load.spec import LoadSpec
    from lbbench.model.load import ConnectionMode

    mode = ConnectionMode("close") if connections is None else ConnectionMode("keepalive", connections)
    spec = LoadSpec(target, rate_rps=rate_rps, duration_s=duration_s, connections=mode, workers=workers, seed=seed,
                    record_rows=False, timeout_s=2.0)
    s = await _run_once(spec)
    if s.pool_wait_s is None:  # close mode: no pool, nothing waits for a connection
        waits = Waits(0.0, None, s.ok_while_sending)
    else:
        own, total = (s.pool_wait_own_s or {}).get("p99"), s.pool_wait_s.get("p99")
        waits = Waits(float(own) if own is not None else math.inf, None if total is None else float(total),
                      s.ok_while_sending)
    return judge(rate_rps, s.achieved_rps, s.scheduled, s.ok, s.lateness_s.get("p99"), waits)


async def lbbench_closed_loop(target: HostPort, duration_s: float, users: int, workers: int) -> float:
    """Requests/s answered 200 by lbbench's generator in closed loop: `users` users, no think time,
    one keep-alive connection each; wrk's way of loading, with lbbench's client."""
    from lbbench.load.spec import LoadSpec
    from lbbench.model.load import ConnectionMode

    spec = LoadSpec(target, duration_s=duration_s, connections=ConnectionMode("keepalive", users), workers=workers,
                    closed_loop_users=users, record_rows=False, timeout_s=2.0)
    s = await _run_once(spec)
    return float(s.ok_rps)


@dataclass
class GeneratorRun:
    wrk_rps: list[float]
    wrk_p99_ms: list[float]
    lbbench_rps: list[float]
    probes: list[list[Probe]]
    closed_rps: list[float]  # lbbench in closed loop, like wrk: as fast as its users go
    # a new connection per request: wrk with Connection: close, lbbench's searched close-mode maximum
    wrk_close_rps: list[float] = field(default_factory=list)
    close_rps: list[float] = field(default_factory=list)
    close_probes: list[list[Probe]] = field(default_factory=list)


RateFn = Callable[[], Awaitable[float]]


@dataclass(frozen=True)
class CloseSides:
    """The new-connection-per-request comparison's two sides."""

    wrk_once: RateFn  # wrk with Connection: close
    probe: ProbeFn  # lbbench in close mode


async def _search_round(answers: list[float], probes_out: list[list[Probe]], probe: ProbeFn, first_rps: float,
                        wrk_rps: list[float]) -> float:
    if answers and answers[-1] > 0:
        # 5 probes: the previous answer, the 20% step above it, the retry of a failure and a
        # bisection (with 3, a bracket such as 96k passed / 115k failed was never narrowed)
        start, factor, budget = answers[-1], 1.2, 5
    elif wrk_rps:
        # half of what wrk just reached: the bracket is found in a probe or two, and the rest of the 7
        # bisect it (from the documented per-worker rate, doubling used them all on the bracket: a single
        # round's answer was the last power of two below the truth)
        start, factor, budget = 0.5 * wrk_rps[-1], 2.0, 7
    else:
        start, factor, budget = first_rps, 2.0, 7
    cap = 3 * max(wrk_rps, default=100_000.0)
    best, probes = await search_max_rate(probe, start, factor, budget, cap)
    answers.append(best)
    probes_out.append(probes)
    return best


async def _lbbench_round(run: GeneratorRun, probe: ProbeFn) -> str:
    best = await _search_round(run.lbbench_rps, run.probes, probe, FIRST_RATE_RPS, run.wrk_rps)
    return f"lbbench generator: max {best:,.0f} req/s ({len(run.probes[-1])} probes)"


async def _close_round(run: GeneratorRun, probe: ProbeFn) -> str:
    best = await _search_round(run.close_rps, run.close_probes, probe, FIRST_CLOSE_RATE_RPS, run.wrk_close_rps)
    return f"lbbench generator, close mode: max {best:,.0f} req/s ({len(run.close_probes[-1])} probes)"


async def _wrk_close_round(run: GeneratorRun, wrk_once: RateFn) -> str:
    rps = await wrk_once()
    run.wrk_close_rps.append(rps)
    return f"wrk, Connection: close: {rps:,.0f} req/s"


async def _wrk_round(run: GeneratorRun, wrk_once: Callable[[], Awaitable[tuple[float, float]]]) -> str:
    rps, p99 = await wrk_once()
    run.wrk_rps.append(rps)
    run.wrk_p99_ms.append(p99)
    return f"wrk: {rps:,.0f} req/s"


async def _closed_round(run: GeneratorRun, closed_once: RateFn) -> str:
    rps = await closed_once()
    run.closed_rps.append(rps)
    return f"lbbench generator, closed loop: {rps:,.0f} req/s"


async def run_rounds(wrk_once: Callable[[], Awaitable[tuple[float, float]]], probe: ProbeFn, closed_once: RateFn,
                     repeats: int, log: Callable[[str], None], close: CloseSides | None = None) -> GeneratorRun:
    """Interleaved rounds (the order reverses every other round): wrk's rate, lbbench's searched
    open-loop maximum, and lbbench in closed loop (the like-for-like match for wrk); with `close`,
    wrk with Connection: close and lbbench's searched close-mode maximum too.

    The first search starts at half of wrk's rate measured just before it (at the generator's
    documented per-worker rate if wrk has none) and doubles; later ones start at the previous answer
    with 20% steps and bisect what they bracket (up to 5 probes).
    """
    run = GeneratorRun([], [], [], [], [])
    for r in range(repeats):
        sides = [functools.partial(_wrk_round, run, wrk_once), functools.partial(_lbbench_round, run, probe),
                 functools.partial(_closed_round, run, closed_once)]
        if close is not None:
            sides += [functools.partial(_wrk_close_round, run, close.wrk_once),
                      functools.partial(_close_round, run, close.probe)]
        if r % 2:
            sides.reverse()
        for side in sides:
            log(f"round {r + 1}/{repeats} {await side()}")
    return run
