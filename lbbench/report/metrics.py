"""The numbers of the side-by-side table, defined once: the report, `lbbench report` and compare use them.

A metric is a key (stable, for JSON), a label, a getter on :class:`FrontendStats` returning a
number (or None: not measured; inf: never, e.g. never recovered) and a formatter. Adding a
row to every table is adding one :class:`Metric` here.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from lbbench.report.loader import FrontendStats

Value = float | None


@dataclass(frozen=True)
class Metric:
    key: str
    label: str
    get: Callable[[FrontendStats], Value]
    fmt: Callable[[Value], str]
    lower_is_better: bool | None = None  # None: neither (e.g. request count)
    has_delta: bool = True  # False for yes/no metrics: a difference of booleans means nothing


def fmt_int(v: Value) -> str:
    return "–" if v is None else f"{v:,.0f}"


def fmt_ms(v: Value) -> str:
    """Seconds shown as milliseconds with 3 significant digits (loopback latencies are sub-ms)."""
    if v is None:
        return "–"
    if math.isinf(v):
        return "never"
    ms = v * 1e3
    return f"{ms:.3g}" if abs(ms) < 100 else f"{ms:,.0f}"


def fmt_s(v: Value) -> str:
    if v is None:
        return "–"
    if math.isinf(v):
        return "never"
    return f"{v:.2f}"


def fmt_rps(v: Value) -> str:
    return "–" if v is None else f"{v:,.1f}"


def fmt_yes_no(v: Value) -> str:
    return "–" if v is None else ("YES" if v else "no")


def lost(f: FrontendStats) -> Value:
    return float(sum(e.lost for e in f.failover)) if f.failover else None


def error_window(f: FrontendStats) -> Value:
    return max(e.error_window_s for e in f.failover) if f.failover else None


def recovery(f: FrontendStats) -> Value:
    """The slowest recovery over the events; inf when one never recovered."""
    if not f.failover:
        return None
    return max(math.inf if e.recovery_s is None else e.recovery_s for e in f.failover)


def _latency(key: str) -> Callable[[FrontendStats], Value]:
    return lambda f: f.latency_s.get(key)


def _error_kind(kind: str) -> Callable[[FrontendStats], Value]:
    return lambda f: float(f.errors.get(kind, 0))


def _cpu(role: str) -> Callable[[FrontendStats], Value]:
    return lambda f: f.cpu_s.get(role)


BASE: tuple[Metric, ...] = (
    Metric("requests", "requests", lambda f: float(f.requests), fmt_int),
    Metric("ok", "ok (2xx)", lambda f: float(f.ok), fmt_int, lower_is_better=False),
    Metric("errors", "errors", lambda f: float(f.error_count), fmt_int, lower_is_better=True),
)
AFTER_ERRORS: tuple[Metric, ...] = (
    Metric("achieved_rps", "achieved rps", lambda f: f.achieved_rps, fmt_rps),
    Metric("latency_s.mean", "latency mean (ms)", _latency("mean"), fmt_ms, lower_is_better=True),
    Metric("latency_s.p50", "latency p50 (ms)", _latency("p50"), fmt_ms, lower_is_better=True),
    Metric("latency_s.p99", "latency p99 (ms)", _latency("p99"), fmt_ms, lower_is_better=True),
    Metric("latency_s.p999", "latency p99.9 (ms)", _latency("p999"), fmt_ms, lower_is_better=True),
    Metric("latency_s.max", "latency max (ms)", _latency("max"), fmt_ms, lower_is_better=True),
    Metric("zero_load.overhead_mean_s", "path overhead at zero load (ms)",
           lambda f: f.zero_load.get("overhead_mean_s"), fmt_ms, lower_is_better=True),
    Metric("lost", "lost during failover", lost, fmt_int, lower_is_better=True),
    Metric("error_window_s", "error window (s)", error_window, fmt_s, lower_is_better=True),
    Metric("recovery_s", "recovery (s)", recovery, fmt_s, lower_is_better=True),
    Metric("cpu_s.frontend", "CPU s: front end", _cpu("frontend"), fmt_s, lower_is_better=True),
    Metric("cpu_s.generator", "CPU s: generator", _cpu("generator"), fmt_s),
    Metric("cpu_s.pods", "CPU s: pods", _cpu("pods"), fmt_s),
    Metric(
        "generator_saturated",
        "generator saturated?",
        lambda f: float(f.generator_saturated),
        fmt_yes_no,
        has_delta=False,
    ),
)


def frontend_metrics(frontends: Sequence[FrontendStats]) -> tuple[Metric, ...]:
    """The table's rows: fixed metrics plus one `errors: <kind>` row per error kind seen anywhere."""
    kinds = sorted({k for f in frontends for k in f.errors})
    per_kind = tuple(
        Metric(f"errors.{k}", f"  errors: {k}", _error_kind(k), fmt_int, lower_is_better=True) for k in kinds
    )
    return BASE + per_kind + AFTER_ERRORS
