"""Theory over the steady state only: the windows of a phase that match a queueing model's assumptions.

A model describes a stable queue under a constant load on the configured pods. So each phase is
compared over its load (after the warm-up, which happens before t = 0) minus every timeline
event's disturbance: from the event until the later of its recovery (lbbench.results.files.failover:
error-free and p99 back within 2x) and the moment the Service's Endpoints are back to the count
they had before it (until then fewer pods serve the same load: not the model's system), or to the
end of the phase when either never happened. Not at all when the utilisation
is >= 1: there is no steady state, and the reason is printed. The reference is the model fed the
server time measured in that same window plus the path's zero-load cost outside the server
(lbbench.results.theory_fit.measured_server_section); without those, the configured model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from lbbench.model.servicetime import ServiceTime
from lbbench.report.loader import FrontendStats, Results, phase_mask
from lbbench.results.files import failover, is_ok
from lbbench.results.theory_fit import measured_server_section
from lbbench.results.uncertainty import Interval, interval

MIN_WINDOW_S = 1.0  # shorter steady windows are not compared: too few requests to say anything


@dataclass(frozen=True)
class SteadyRow:
    frontend: str
    rate_rps: float
    model: str
    utilisation: float | None
    window: str  # e.g. "0–5.0 s (before kill_pod deployment/web at 5.0 s, never recovered)"
    reference: str  # which prediction: "measured server + path", "model + path" or "model"
    mean: Interval | None
    p99: Interval | None
    measured_mean_s: float | None
    measured_p99_s: float | None
    predicted_mean_s: float | None
    predicted_p99_s: float | None
    reason: str = ""  # not compared, and why

    def rel_error(self, stat: str) -> float | None:
        m, p = (self.measured_mean_s, self.predicted_mean_s) if stat == "mean" else (
            self.measured_p99_s, self.predicted_p99_s)
        return None if m is None or not p else (m - p) / p

    def verdict(self, tolerance: float | None) -> str:
        if self.reason:
            return "not compared"
        errs = [e for e in (self.rel_error("mean"), self.rel_error("p99")) if e is not None]
        if tolerance is None or not errs:
            return "–"
        return "pass" if all(abs(e) <= tolerance for e in errs) else "FAIL"


def _windows(rows: pd.DataFrame, events: pd.DataFrame, duration_s: float) -> tuple[list[tuple[float, float]], str]:
    """Undisturbed [start, end) intervals of one phase, and how they were chosen."""
    cuts = []
    notes = []
    fired = events.loc[events["kind"] == "event"] if len(events) else events
    if len(fired):
        for f in failover(rows, fired.assign(detail=fired["detail"], target=fired["target"]), duration_s):
            end = duration_s if f["recovery_s"] is None else f["at_s"] + f["recovery_s"]
            restored = capacity_restored_at(events, f["at_s"], duration_s)
            cuts.append((f["at_s"], max(end, restored)))
            notes.append(f"{f['event']} at {f['at_s']:.1f} s" + _disturbance_note(f["recovery_s"], restored, end))
    kept, start = [], 0.0
    for a, b in sorted(cuts):
        if a - start >= MIN_WINDOW_S:
            kept.append((start, a))
        start = max(start, b)
    if duration_s - start >= MIN_WINDOW_S:
        kept.append((start, duration_s))
    text = ", ".join(f"{a:.1f}–{b:.1f} s" for a, b in kept) or "none"
    return kept, text + (f" (excluding {'; '.join(notes)})" if notes else "")


def _synced_count(detail: object) -> int | None:
    """Ready endpoints in an `endpoints_synced` detail ("4 web-a=127.10.0.2 ..."): its first word."""
    head = str(detail).split(" ", 1)[0]
    return int(head) if head.isdigit() else None


def capacity_restored_at(events: pd.DataFrame, at_s: float, duration_s: float) -> float:
    """When every Service's Endpoints are back to their count before `at_s`.

    `at_s` itself when the event never lowered them; the end of the phase when they never came back.
    """
    if not len(events):
        return at_s
    synced = events.loc[events["kind"] == "endpoints_synced"].sort_values("at_s")
    restored = at_s
    for _, one in synced.groupby("target"):
        counts = [(float(t), _synced_count(d)) for t, d in zip(one["at_s"], one["detail"], strict=True)]
        before = [c for t, c in counts if t <= at_s and c is not None]
        if before:
            restored = max(restored, _back_at(counts, at_s, before[-1], duration_s))
    return restored


def _back_at(counts: list[tuple[float, int | None]], at_s: float, wanted: int, duration_s: float) -> float:
    back: float | None = at_s
    for t, c in counts:
        if t <= at_s or c is None:
            continue
        if c < wanted:
            back = None  # down: back only when a later sync says so
        elif back is None:
            back = t
    return duration_s if back is None else back


def _disturbance_note(recovery_s: float | None, restored_s: float, end_s: float) -> str:
    if recovery_s is None:
        return ", never recovered"
    text = f", recovered {recovery_s:.1f} s later"
    return text + (f", Endpoints back to full strength at {restored_s:.1f} s" if restored_s > end_s else "")


def _in(rows: pd.DataFrame, windows: list[tuple[float, float]]) -> pd.Series:
    t = rows["intended_s"].astype(float)
    mask = pd.Series(False, index=rows.index)
    for a, b in windows:
        mask |= (t >= a) & (t < b)
    return mask


def _inputs(r: Results) -> tuple[int, int, ServiceTime, Any] | None:
    ti = r.config.get("theory_inputs") or {}
    try:
        return int(ti["pods"]), int(ti["slots"]), ServiceTime.parse(str(ti["service"])), ti.get("arrivals", "poisson")
    except (KeyError, TypeError, ValueError):
        return None


def _not_compared(frontend: str, rate: float, model: str, rho: float | None, window: str, reason: str) -> SteadyRow:
    return SteadyRow(frontend, rate, model, rho, window, "–", None, None, None, None, None, None, reason)


def steady_row(r: Results, stats: FrontendStats, rate: float, theory: dict[str, Any]) -> SteadyRow | None:
    model, rho = theory.get("model"), theory.get("utilisation")
    rho = float(rho) if isinstance(rho, int | float) else None
    if model is None:
        return None
    if rho is not None and rho >= 1:
        return _not_compared(stats.name, rate, str(model), rho, "–",
                             f"utilisation {rho:.2f} >= 1: the queue grows without bound, no steady state")
    picked: list[pd.DataFrame] = []
    text = ""
    for p in (p for p in r.phases if p.frontend == stats.name and p.rate_rps == rate and p.stats is not None):
        rows = r.requests.loc[phase_mask(r.requests, stats.name, rate, p.repeat)]
        ev = r.events.loc[phase_mask(r.events, stats.name, rate, p.repeat)] if len(r.events) else r.events
        windows, text = _windows(rows.sort_values("intended_s"), ev, r.duration_s)
        picked.append(rows.loc[_in(rows, windows)].sort_values("intended_s"))
    rows = pd.concat(picked) if picked else pd.DataFrame()
    ok = rows.loc[is_ok(rows)] if len(rows) else rows
    lat = ok["latency_s"].to_numpy(dtype=float) if len(ok) else np.array([])
    if lat.size == 0:
        return _not_compared(stats.name, rate, str(model), rho, text or "none", "no undisturbed window of 1 s or more")
    measured = {"mean": float(lat.mean()), "p99": float(np.quantile(lat, 0.99))}
    reference, pmean, pp99 = _prediction(r, str(model), rate, theory, measured, ok, stats.zero_load)
    return SteadyRow(stats.name, rate, str(model), rho, window=text, reference=reference, mean=interval(lat, None),
                     p99=interval(lat, 0.99), measured_mean_s=measured["mean"], measured_p99_s=measured["p99"],
                     predicted_mean_s=pmean, predicted_p99_s=pp99)


def _prediction(r: Results, model: str, rate: float, theory: dict[str, Any], measured: dict[str, float],
                ok: pd.DataFrame, zero_load: dict[str, Any]) -> tuple[str, float | None, float | None]:
    """The best available reference: measured server (in this window) + path, else model + path, else model."""
    inputs = _inputs(r)
    if inputs is not None:
        pods, slots, service, arrivals = inputs
        try:
            fit = measured_server_section(model, pods, slots, service, rate, arrivals, measured, ok, zero_load)
        except ValueError:
            fit = {}
        pm, pp = fit.get("predicted_mean_measured_server_s"), fit.get("predicted_p99_measured_server_s")
        if isinstance(pm, float) and math.isfinite(pm):
            return "model fed the measured server time + path", pm, pp if isinstance(pp, float) else None
    for suffix, label in (("_plus_path_s", "model + path"), ("_s", "model")):
        pm, pp = theory.get(f"predicted_mean{suffix}"), theory.get(f"predicted_p99{suffix}")
        if isinstance(pm, int | float):
            return label, float(pm), float(pp) if isinstance(pp, int | float) else None
    return "–", None, None


def steady_rows(r: Results) -> tuple[list[SteadyRow], list[str]]:
    """One row per front end and rate with a model; and the reasons for those without one."""
    rows, reasons = [], []
    for rate in r.rates:
        for name in r.frontend_names:
            phase = next((p for p in r.phases if p.frontend == name and p.rate_rps == rate and p.stats), None)
            if phase is None or phase.stats is None:
                continue
            for t in phase.stats.theory:
                if t.get("model") is None:
                    if rate == r.first_rate:
                        reasons.append(f"{name}: no model: {t.get('reason', 'no reason given')}")
                    continue
                if (row := steady_row(r, phase.stats, rate, t)) is not None:
                    rows.append(row)
    return rows, reasons


def tolerance(r: Results) -> float | None:
    v = (r.config.get("report") or {}).get("theory_tolerance")
    return float(v) if isinstance(v, int | float) else None
