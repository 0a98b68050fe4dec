"""What the clients got, per front end: the numbers the report leads with and ranks on.

Errors come first (a front end that drops requests is never "fastest"), then the share of all
requests answered OK within the SLO, then latency counting every request: a failed one at the
time the client gave up (its `latency_s` row). The 2xx-only percentiles are kept, labelled so.
Every latency carries a 95% batch-means interval (lbbench.results.uncertainty).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from lbbench.model.servicetime import ServiceTime
from lbbench.report.loader import FrontendStats, Results, phase_mask
from lbbench.report.metrics import error_window, lost, recovery
from lbbench.results.files import is_ok
from lbbench.results.uncertainty import Interval, latency_intervals

SLO_SERVICE_TIMES = 10  # default SLO: 10x the mean service time (a request may queue behind a few others)
SLO_FALLBACK_S = 0.1  # when the run has no single service time to derive it from


@dataclass(frozen=True)
class ClientView:
    frontend: str
    rate_rps: float | None
    requests: int
    ok: int
    errors: dict[str, int]
    slo_s: float
    within_slo: int  # 2xx within the SLO
    all_ci: dict[str, Interval | None]  # every request; a failure at the time the client gave up
    ok_ci: dict[str, Interval | None]  # 2xx only
    all_latency: dict[str, float | None]
    ok_latency: dict[str, float | None]
    lost: float | None
    recovery_s: float | None
    error_window_s: float | None

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    @property
    def errors_pct(self) -> float:
        return 100.0 * self.error_count / self.requests if self.requests else 0.0

    @property
    def slo_pct(self) -> float | None:
        return 100.0 * self.within_slo / self.requests if self.requests else None

    def rank_key(self) -> tuple[float, float, float]:
        """Errors first, then SLO attainment, then p99 counting failures (lower sorts first)."""
        p99 = self.all_latency.get("p99")
        return (round(self.errors_pct, 3), -(self.slo_pct or 0.0), math.inf if p99 is None else p99)


def slo(r: Results) -> tuple[float, str]:
    """(SLO in seconds, where it comes from)."""
    given = (r.config.get("report") or {}).get("slo_s")
    if isinstance(given, int | float) and given > 0:
        return float(given), "[report] slo"
    ti = r.config.get("theory_inputs") or {}
    try:
        mean = ServiceTime.parse(str(ti["service"])).mean_s
    except (KeyError, ValueError, TypeError):
        return SLO_FALLBACK_S, "default (no single service time in this run)"
    return SLO_SERVICE_TIMES * mean, f"default: {SLO_SERVICE_TIMES} x the mean service time {mean * 1e3:g} ms"


def _stats(values: np.ndarray) -> tuple[dict[str, float | None], dict[str, Interval | None]]:
    if not values.size:
        return {k: None for k in ("mean", "p50", "p99", "p999", "max")}, {}
    ci = latency_intervals(values)
    stats: dict[str, float | None] = {
        "mean": float(values.mean()),
        **{k: float(np.quantile(values, q)) for k, q in (("p50", 0.5), ("p99", 0.99), ("p999", 0.999))},
        "max": float(values.max()),
    }
    return stats, ci


def client_view(r: Results, f: FrontendStats, rate: float | None, rows: pd.DataFrame | None = None) -> ClientView:
    """`f`'s stats at `rate` (repeats merged), recomputed from the rows in send order."""
    if rows is None:
        rows = r.requests.loc[phase_mask(r.requests, f.name, rate)] if len(r.requests) else r.requests
    view = view_of_rows(f.name, rate, rows, slo(r)[0])
    if len(rows):
        return replace(view, lost=lost(f), recovery_s=recovery(f), error_window_s=error_window(f))
    # no rows file: what summary.json says, without intervals
    return replace(view, requests=f.requests, ok=f.ok, errors=f.errors, lost=lost(f), recovery_s=recovery(f),
                   error_window_s=error_window(f), ok_latency={k: f.latency_s.get(k) for k in view.ok_latency})


def view_of_rows(name: str, rate: float | None, rows: pd.DataFrame, slo_s: float) -> ClientView:
    """What the clients of one target got, from its request rows (any order; sorted into send order)."""
    if len(rows):
        keys = [k for k in ("repeat", "intended_s") if k in rows.columns]
        rows = rows.sort_values(keys, kind="stable")
    ok = is_ok(rows) if len(rows) else pd.Series(dtype=bool)
    lat = rows["latency_s"].to_numpy(dtype=float) if len(rows) else np.array([])
    ok_lat = rows.loc[ok, "latency_s"].to_numpy(dtype=float) if len(rows) else np.array([])
    all_stats, all_ci = _stats(lat[~np.isnan(lat)])
    ok_stats, ok_ci = _stats(ok_lat[~np.isnan(ok_lat)])
    return ClientView(
        frontend=name, rate_rps=rate, requests=len(rows), ok=int(ok.sum()) if len(rows) else 0,
        errors=_errors(rows, ok) if len(rows) else {}, slo_s=slo_s, within_slo=int((ok_lat <= slo_s).sum()),
        all_ci=all_ci, ok_ci=ok_ci, all_latency=all_stats, ok_latency=ok_stats, lost=None, recovery_s=None,
        error_window_s=None,
    )


def _errors(rows: pd.DataFrame, ok: pd.Series) -> dict[str, int]:
    failed = rows.loc[~ok]
    kinds = failed["error"].where(failed["error"] != "", "http_other")
    return {str(k): int(v) for k, v in kinds.value_counts().items()}


def ranked(r: Results) -> list[ClientView]:
    """Every measured front end at the first rate (repeats merged), best first."""
    return sorted((client_view(r, f, r.first_rate) for f in r.frontends), key=ClientView.rank_key)


def per_rate(r: Results) -> dict[float, list[ClientView]]:
    """A sweep: every front end at every rate (repeats merged), best first at each rate."""
    out: dict[float, list[ClientView]] = {}
    for rate in r.rates:
        views = []
        for name in r.frontend_names:
            phases = [p for p in r.phases if p.frontend == name and p.rate_rps == rate and p.stats is not None]
            if phases and phases[0].stats is not None:
                views.append(client_view(r, phases[0].stats, rate))
        out[rate] = sorted(views, key=ClientView.rank_key)
    return out
