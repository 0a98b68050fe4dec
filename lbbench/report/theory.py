"""Measured against predicted: the `theory` sections of summary.json as a table.

Two shapes are read. The one `lbbench run` writes (lbbench.results.theory_fit):
  {"model", "why", "exact", "note", "utilisation", "predicted_<q>", "measured_<q>", "rel_err_<stat>"}
or {"model": null, "reason"} when no model applies; and a plain one, {"model", "<q>": predicted},
whose measured values are looked up in the front end's stats. <q> is e.g. mean_s, p50_s, p99_s.
Relative errors are recomputed here from the two values, one formula for both shapes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from lbbench.report.analysis import fmt_opt
from lbbench.report.doc import Bullets, Table
from lbbench.report.loader import FrontendStats, Results
from lbbench.report.metrics import fmt_ms


def _latency(stat: str) -> Callable[[FrontendStats], float | None]:
    return lambda f: f.latency_s.get(stat)


# quantity -> (label, measured value from the front end's stats). A new quantity: one more line.
MEASURED: dict[str, tuple[str, Callable[[FrontendStats], float | None]]] = {
    "mean_s": ("latency mean", lambda f: f.latency_s.get("mean")),
    "p50_s": ("latency p50", lambda f: f.latency_s.get("p50")),
    "p90_s": ("latency p90", lambda f: f.latency_s.get("p90")),
    "p99_s": ("latency p99", lambda f: f.latency_s.get("p99")),
    "p999_s": ("latency p99.9", lambda f: f.latency_s.get("p999")),
    # measured: latency - pod service time - the path's zero-load overhead (lbbench.results.theory_fit)
    "mean_wait_s": ("mean wait (anywhere)", lambda f: None),
    # model + the path's zero-load overhead, against the same measured latency
    "mean_plus_path_s": ("latency mean vs model + path", _latency("mean")),
    "p50_plus_path_s": ("latency p50 vs model + path", _latency("p50")),
    "p99_plus_path_s": ("latency p99 vs model + path", _latency("p99")),
    # the model fed the server time this run measured, + the zero-load path outside that server
    "mean_measured_server_s": ("latency mean vs model (measured server) + path", _latency("mean")),
    "p50_measured_server_s": ("latency p50 vs model (measured server) + path", _latency("p50")),
    "p99_measured_server_s": ("latency p99 vs model (measured server) + path", _latency("p99")),
    # in the queue the model describes (the proxy's, or the pod's), as that queue measured it
    "queue_wait_s": ("mean wait in the model's queue (measured server)", lambda f: None),
    "p_wait": ("P(wait) in the model's queue (measured server)", lambda f: None),
}
NOT_QUANTITIES = {"model", "why", "reason", "note", "exact", "utilisation", "zero_load_overhead_s", "server_time_s",
                  "server_time_source", "utilisation_measured_server", "zero_load_outside_server_s"}


@dataclass(frozen=True)
class Comparison:
    frontend: str
    rate: str
    model: str
    quantity: str
    measured: float | None
    predicted: float

    @property
    def rel_error(self) -> float | None:
        if self.measured is None or not self.predicted:
            return None
        return (self.measured - self.predicted) / self.predicted


def _number(v: Any) -> float | None:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None


def quantities(theory: dict[str, Any], fe: FrontendStats) -> list[tuple[str, float | None, float]]:
    """(quantity, measured, predicted) for every predicted number of one theory section."""
    out = []
    for key, value in theory.items():
        predicted = _number(value)
        if predicted is None or key in NOT_QUANTITIES or key.startswith(("measured_", "rel_err_")):
            continue
        q = key.removeprefix("predicted_")
        measured = _number(theory.get(f"measured_{q}"))
        if measured is None and q in MEASURED:
            measured = MEASURED[q][1](fe)
        out.append((q, measured, predicted))
    return out


def sources(r: Results) -> list[tuple[str, FrontendStats, dict[str, Any], bool]]:
    """(rate label, stats, theory, is the first rate): per front end at the first rate (repeats merged),
    per phase at the other rates of a sweep."""
    rate = f"{r.first_rate:g}" if r.first_rate is not None else "–"
    out = [(rate, f, t, True) for f in r.frontends for t in f.theory]
    several = any(p.repeat > 0 for p in r.phases)
    for p in r.phases:
        if p.stats is not None and p.rate_rps != r.first_rate:
            label = f"{p.rate_rps:g}" + (f" #{p.repeat}" if several else "")
            out += [(label, p.stats, t, False) for t in p.stats.theory]
    return out


def _model(t: dict[str, Any]) -> str:
    rho = _number(t.get("utilisation"))
    return str(t.get("model")) + (f" (ρ {rho:.2f})" if rho is not None else "")


def comparisons(r: Results) -> tuple[list[Comparison], list[str]]:
    """The rows, and the notes (why a model fits, or why none does; said once, at the first rate)."""
    rows, notes = [], []
    for rate, fe, t, first in sources(r):
        if t.get("model") is None:
            if first:
                notes.append(f"{fe.name}: no model: {t.get('reason', 'no reason given')}")
            continue
        why = "; ".join(str(t[k]) for k in ("why", "note") if t.get(k))
        server = _number(t.get("server_time_s"))
        if server is not None and first:
            rho = _number(t.get("utilisation_measured_server"))
            notes.append(f"{fe.name}: measured server time {fmt_ms(server)} ms"
                         + (f" (ρ {rho:.2f})" if rho is not None else "") + f": {t.get('server_time_source')}")
        if why and first:
            approx = "" if t.get("exact", True) else " (approximation)"
            notes.append(f"{fe.name}: {t['model']}{approx}: {why}")
        rows += [Comparison(fe.name, rate, _model(t), q, m, p) for q, m, p in quantities(t, fe)]
    return rows, notes


def _value(quantity: str, v: float | None) -> str:
    return (fmt_ms(v) + " ms" if v is not None else "–") if quantity.endswith("_s") else fmt_opt(v, ".4g")


def theory_blocks(r: Results) -> tuple[Table | None, Bullets | None]:
    rows, notes = comparisons(r)
    table = None
    if rows:
        cells = tuple(
            (
                c.frontend,
                c.rate,
                c.model,
                MEASURED.get(c.quantity, (c.quantity,))[0],
                _value(c.quantity, c.measured),
                _value(c.quantity, c.predicted),
                "–" if c.rel_error is None else f"{c.rel_error:+.1%}",
            )
            for c in rows
        )
        table = Table(
            ("front end", "rate (rps)", "model", "quantity", "measured", "predicted", "relative error"),
            cells,
            align=("l", "r", "l", "l", "r", "r", "r"),
            caption="relative error = (measured − predicted) / predicted; ρ: the model's utilisation.",
        )
    return table, (Bullets(tuple(notes)) if notes else None)
