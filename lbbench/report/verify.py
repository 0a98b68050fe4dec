"""Recompute summary.json's per-front-end numbers from requests.parquet + events.csv and compare.

Uses the same functions `lbbench run` used (lbbench.results.files), over the same selection (each front
end at the first rate, repeats merged; failover judged per repeat), so a copied folder must
reproduce its summary exactly. CPU and generator health are not in the rows: they are taken as-is.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import pandas as pd

from lbbench.report.loader import FrontendStats, Results, frontend_stats, phase_mask
from lbbench.results.files import failover, frontend_summary

REL_TOL = 1e-6
ABS_TOL = 1e-6  # events.csv keeps event times to the microsecond


def recompute(r: Results) -> tuple[FrontendStats, ...]:
    out = []
    for f in r.frontends:
        stats = recompute_frontend(r, f)
        if stats is not None:
            out.append(stats)
    return tuple(out)


def recompute_frontend(r: Results, f: FrontendStats) -> FrontendStats | None:
    rows, events = r.requests, r.events
    if r.first_rate is None:
        return None
    repeats = sorted(
        {p.repeat for p in r.phases if p.frontend == f.name and p.rate_rps == r.first_rate and p.stats}
    )
    if not repeats:
        return None
    duration = r.duration_s
    mine = rows.loc[phase_mask(rows, f.name, r.first_rate)] if len(rows) else rows
    if not len(mine):
        return replace(
            f,
            requests=0,
            ok=0,
            errors={},
            achieved_rps=0.0,
            failover=(),
            pod_share={},
            latency_s={k: None for k in f.latency_s},
        )
    ran = {rep: _ran_s(r, f.name, rep) for rep in repeats}
    entry = frontend_summary(
        mine, _events_of(events, f.name, r.first_rate, None), duration * len(repeats), {}, {},
        ran_s=sum(ran.values()),
    )
    fail: list[dict[str, Any]] = []
    rates = []
    for rep in repeats:
        rep_rows = mine.loc[mine["repeat"].astype(int) == rep]
        fail += failover(rep_rows, _events_of(events, f.name, r.first_rate, rep), duration)
        rates.append(len(rep_rows) / ran[rep] if ran[rep] > 0 else 0.0)
    entry["failover"] = fail
    entry["achieved_rps"] = sum(rates) / len(rates)
    fresh = frontend_stats(f.name, entry)
    # not recomputable from the rows: keep the summary's
    return replace(
        fresh,
        cpu_s=f.cpu_s,
        generator_saturated=f.generator_saturated,
        saturation_reason=f.saturation_reason,
        repeats=f.repeats,
        complete=f.complete,
        theory=f.theory,
        spread=f.spread,
    )


def _ran_s(r: Results, name: str, repeat: int) -> float:
    """Seconds this phase's load ran, as summary.json says (folders before `ran_s`: the duration)."""
    phase = next(p for p in r.phases if p.frontend == name and p.rate_rps == r.first_rate and p.repeat == repeat)
    ran = phase.stats.ran_s if phase.stats is not None else None
    return r.duration_s if ran is None else ran


def _events_of(events: pd.DataFrame, name: str, rate: float, repeat: int | None) -> pd.DataFrame:
    if not len(events):
        return pd.DataFrame(columns=["at_s", "kind", "target", "detail"])
    return events.loc[phase_mask(events, name, rate, repeat)]


def _close(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return math.isclose(a, b, rel_tol=REL_TOL, abs_tol=ABS_TOL)


def disagreements(summary: FrontendStats, fresh: FrontendStats) -> list[str]:
    """Human-readable differences between summary.json and the recomputed numbers (empty: they agree)."""
    name = summary.name
    out = []
    for field in ("requests", "ok", "errors", "pod_share"):
        a, b = getattr(summary, field), getattr(fresh, field)
        # pod shares are fractions (floats); the rest are exact counts
        same = a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a) if field == "pod_share" else a == b
        if not same:
            out.append(f"{name}: {field} is {a} in summary.json but {b} from the rows")
    if not _close(summary.achieved_rps, fresh.achieved_rps):
        out.append(
            f"{name}: achieved_rps {summary.achieved_rps} in summary.json but {fresh.achieved_rps} "
            "from the rows"
        )
    for k, v in summary.latency_s.items():
        if not _close(v, fresh.latency_s.get(k)):
            out.append(
                f"{name}: latency {k} {v} s in summary.json but {fresh.latency_s.get(k)} s from the rows"
            )
    if len(summary.failover) != len(fresh.failover):
        out.append(
            f"{name}: {len(summary.failover)} failover events in summary.json, {len(fresh.failover)} "
            "from events.csv"
        )
    for a, b in zip(summary.failover, fresh.failover, strict=False):
        for field in ("lost", "error_window_s", "recovery_s", "at_s"):
            va, vb = getattr(a, field), getattr(b, field)
            if not _close(None if va is None else float(va), None if vb is None else float(vb)):
                out.append(f"{name}: {a.event}: {field} {va} in summary.json but {vb} from the rows")
    return out


def check(r: Results) -> tuple[tuple[FrontendStats, ...], list[str]]:
    """(recomputed stats, disagreements with summary.json)."""
    fresh = recompute(r)
    by_name = {f.name: f for f in fresh}
    problems = []
    for f in r.frontends:
        if f.name not in by_name:
            problems.append(f"{f.name}: in summary.json but no measured phase to recompute it from")
            continue
        problems += disagreements(f, by_name[f.name])
    return fresh, problems
