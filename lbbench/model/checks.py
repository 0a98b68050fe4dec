"""Pass/fail checks on a run's results, k6-threshold style: `FRONTEND.METRIC OP VALUE`.

    l7-proxy.lost == 0
    *.errors_pct < 1
    userspace-dnat.p99 < 200ms
    l7-proxy.theory.mean within 10%

FRONTEND is a front end's name or `*` (every measured front end). Latencies (`mean`, `p50`,
`p99`, `p999`, `max`) count every request, a failed one at the time the client gave up;
`ok_mean`, `ok_p50`, ... count successful (2xx) requests only. A latency needs a unit (`ms`,
`s`, `us`). `theory.mean` / `theory.p99` compare the steady-state measurement with the model
(the relative error must be within the percentage). Parsed here (the config validates them);
evaluated by lbbench.report.checks.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

LATENCY = ("mean", "p50", "p99", "p999", "max")
COUNTS = ("requests", "ok", "errors", "lost")
METRICS: dict[str, str] = {
    **{m: "latency (all requests, a failure at the time the client gave up)" for m in LATENCY},
    **{f"ok_{m}": "latency of successful (2xx) requests" for m in LATENCY},
    **{m: "count" for m in COUNTS},
    "errors_pct": "failed requests, % of all",
    "slo_pct": "requests answered OK within the SLO, % of all",
    "achieved_rps": "requests sent per second",
    "recovery_s": "slowest recovery after an event (s; never: infinite)",
    "error_window_s": "longest error window after an event (s)",
}
THEORY = ("mean", "p99")
OPS = ("<=", ">=", "==", "!=", "<", ">")
_UNITS = {"us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0}
_CHECK = re.compile(
    r"^\s*(?P<target>\*|[a-z0-9-]+)\.(?P<metric>[a-z0-9_.]+)\s*"
    r"(?:(?P<op><=|>=|==|!=|<|>)|(?P<within>within))\s*"
    r"(?P<value>[-+]?[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(?P<unit>us|µs|ms|s|%)?\s*$"
)


@dataclass(frozen=True)
class Check:
    text: str
    target: str  # a front end or "*"
    metric: str  # a key of METRICS, or "theory.mean" / "theory.p99"
    op: str  # one of OPS, or "within"
    value: float  # seconds for latencies; a fraction for `within`; as written otherwise

    @property
    def is_theory(self) -> bool:
        return self.metric.startswith("theory.")

    def passes(self, measured: float) -> bool:
        if self.op == "within":
            return abs(measured) <= self.value
        return {
            "<": measured < self.value, "<=": measured <= self.value, ">": measured > self.value,
            ">=": measured >= self.value, "==": measured == self.value, "!=": measured != self.value,
        }[self.op]


def _value(metric: str, value: float, unit: str | None, text: str) -> float:
    base = metric.removeprefix("ok_")
    if base in LATENCY:
        if unit is None or unit == "%":
            raise ValueError(f"{text!r}: a latency needs a unit, e.g. {value:g}ms")
        return value * _UNITS[unit]
    if unit is not None and not (unit == "%" and metric.endswith("_pct")) and not (
        unit == "s" and metric.endswith("_s")
    ):
        raise ValueError(f"{text!r}: {metric} takes no unit {unit!r}")
    return value


def parse_check(text: str) -> Check:
    """Raises ValueError naming what is wrong and what is expected."""
    m = _CHECK.match(text)
    if not m:
        raise ValueError(f"{text!r}: expected FRONTEND.METRIC OP VALUE (e.g. 'l7-proxy.p99 < 200ms', "
                         f"'*.errors_pct < 1') or FRONTEND.theory.mean within 10%")
    target, metric, unit = m["target"], m["metric"], m["unit"]
    value = float(m["value"])
    if m["within"]:
        if metric not in tuple(f"theory.{q}" for q in THEORY) or unit != "%":
            raise ValueError(f"{text!r}: 'within' takes theory.mean or theory.p99 and a percentage, "
                             "e.g. 'l7-proxy.theory.mean within 10%'")
        return Check(text.strip(), target, metric, "within", value / 100)
    if metric not in METRICS:
        raise ValueError(f"{text!r}: unknown metric {metric!r}; expected one of {', '.join(METRICS)}")
    return Check(text.strip(), target, metric, m["op"], _value(metric, value, unit, text.strip()))
