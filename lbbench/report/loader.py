"""Read a results folder into plain typed data; the only place that tolerates missing keys and files.

Everything downstream (plots, tables, narrative, compare) works on :class:`Results` and never
opens a file or talks to a live process, so any run can be re-reported later.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from lbbench.errors import UserError
from lbbench.results.files import read_summary
from lbbench.results.uncertainty import STATS, Interval, from_json

# requests.parquet columns the report uses (read only these: a long run has millions of rows)
REQUEST_COLUMNS = (
    "intended_s",
    "latency_s",
    "status",
    "error",
    "pod",
    "queue_ms",
    "service_ms",
    "proxy_queue_ms",
    "proxy_upstream_ms",
    "frontend",
    "rate_rps",
    "repeat",
)
EVENT_COLUMNS = ("at_s", "kind", "target", "detail", "frontend", "rate_rps", "repeat")
PHASE_COLUMNS = ("frontend", "rate_rps", "repeat")
REQUIRED_EVENT_COLUMNS = ("at_s", "kind", "target", "detail")  # written by every lbbench that wrote events.csv
# summary.json's sections and their JSON kind (older folders may lack some; none may be of another kind)
OBJECT, LIST = (dict, "an object"), (list, "a list")
SUMMARY_SECTIONS: dict[str, tuple[type, str]] = {"metadata": OBJECT, "config": OBJECT, "frontends": OBJECT,
                                                 "phases": LIST, "skipped": OBJECT}


@dataclass(frozen=True)
class FailoverStats:
    event: str
    at_s: float
    lost: int
    error_window_s: float
    recovery_s: float | None  # None: never recovered before the end of the run
    pre_event_p99_s: float | None = None


@dataclass(frozen=True)
class FrontendStats:
    """One front end's line of summary.json (at the first rate; repeats merged)."""

    name: str
    requests: int
    ok: int
    errors: dict[str, int]
    achieved_rps: float | None
    ok_rps: float | None
    latency_s: dict[str, float | None]
    pod_share: dict[str, float]
    failover: tuple[FailoverStats, ...]
    generator_saturated: bool
    saturation_reason: str | None
    cpu_s: dict[str, float]
    repeats: int
    complete: bool
    theory: tuple[dict[str, Any], ...] = ()
    spread: dict[str, Any] = field(default_factory=dict)
    zero_load: dict[str, Any] = field(default_factory=dict)  # the path's cost at zero load (lbbench.run.zeroload)
    host_cpu: dict[str, float] = field(default_factory=dict)  # hypervisor steal (lbbench.system.hoststat)
    latency_ci: dict[str, Interval | None] = field(default_factory=dict)  # 2xx, 95% batch means (latency_ci_s)
    ran_s: float | None = None  # seconds the load ran (less than the duration if cut short); None: older folder

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())


@dataclass(frozen=True)
class PhaseStats:
    """One phase (front end x rate x repeat) of summary.json."""

    frontend: str
    rate_rps: float
    repeat: int
    complete: bool
    error: str | None
    stats: FrontendStats | None  # None when the phase measured nothing (it failed before the load)


@dataclass(frozen=True)
class Results:
    folder: Path
    summary: dict[str, Any]
    complete: bool
    metadata: dict[str, Any]
    config: dict[str, Any]
    frontends: tuple[FrontendStats, ...]
    phases: tuple[PhaseStats, ...]
    skipped: dict[str, str]
    requests: pd.DataFrame
    events: pd.DataFrame
    timeseries: pd.DataFrame
    notes: tuple[str, ...]  # what was missing or odd while reading

    @property
    def name(self) -> str:
        return str(self.config.get("name") or self.folder.name)

    @property
    def duration_s(self) -> float:
        return float(self.config.get("duration_s") or 0.0)

    @property
    def rates(self) -> tuple[float, ...]:
        return tuple(dict.fromkeys(p.rate_rps for p in self.phases))

    @property
    def first_rate(self) -> float | None:
        """summary.json's per-front-end numbers are at the first phase's rate (see collect.py)."""
        return self.phases[0].rate_rps if self.phases else None

    @property
    def frontend_names(self) -> tuple[str, ...]:
        names = [f.name for f in self.frontends] + [p.frontend for p in self.phases]
        return tuple(dict.fromkeys(names))

    def frontend(self, name: str) -> FrontendStats | None:
        return next((f for f in self.frontends if f.name == name), None)


def load_results(folder: Path | str) -> Results:
    """Read every file of a results folder. Raises UserError when it is not one."""
    path = Path(folder)
    summary = _summary(path)
    notes: list[str] = []
    try:
        frontends = tuple(frontend_stats(name, d) for name, d in (summary.get("frontends") or {}).items())
        phases = tuple(_phase(d) for d in summary.get("phases") or [])
    except (TypeError, ValueError, AttributeError) as e:
        raise UserError(f"{path}/summary.json: a value of an unexpected type ({e})") from None
    return Results(
        folder=path,
        summary=summary,
        complete=bool(summary.get("complete", False)),
        metadata=dict(summary.get("metadata") or {}),
        config=dict(summary.get("config") or {}),
        frontends=frontends,
        phases=phases,
        skipped={str(k): str(v) for k, v in (summary.get("skipped") or {}).items()},
        requests=_parquet(path / "requests.parquet", REQUEST_COLUMNS, notes),
        events=_events(path / "events.csv", notes),
        timeseries=_parquet(path / "timeseries.parquet", (), notes),
        notes=tuple(notes),
    )


def _summary(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise UserError(f"{path}: no such folder")
    if not path.is_dir():
        raise UserError(f"{path}: not a folder (expected a results folder written by 'lbbench run')")
    if not (path / "summary.json").is_file():
        raise UserError(f"{path}: not a results folder (no summary.json)")
    try:
        summary = read_summary(path)
    except json.JSONDecodeError as e:
        raise UserError(f"{path}/summary.json: not valid JSON ({e})") from None
    except (ValueError, OSError) as e:  # UnicodeDecodeError is a ValueError
        raise UserError(f"{path}/summary.json: {e}" if "summary.json" not in str(e) else str(e)) from None
    for key, (kind, name) in SUMMARY_SECTIONS.items():
        if summary.get(key) is not None and not isinstance(summary[key], kind):
            raise UserError(f"{path}/summary.json: {key!r} should be {name}, got {type(summary[key]).__name__}")
    return summary


def _parquet(path: Path, columns: tuple[str, ...], notes: list[str]) -> pd.DataFrame:
    """A missing file is a note (a run that failed to write it says so in summary.json); an unreadable
    one is an error: reporting zeros over it would overwrite a good report with a wrong one."""
    if not path.is_file():
        notes.append(f"{path.name} is missing")
        return pd.DataFrame(columns=list(columns))
    try:
        import pyarrow.parquet as pq

        present = set(pq.read_schema(path).names)
        wanted = [c for c in columns if c in present] if columns else None
        df = pd.read_parquet(path, columns=wanted)
    except Exception as e:  # pyarrow raises its own kinds for a truncated or foreign file
        raise UserError(f"{path}: not a readable parquet file (truncated or damaged?): {_first_line(e)}") from None
    for c in columns:
        if c not in df.columns:
            df[c] = pd.Series(dtype=float if c.endswith(("_s", "_ms", "_rps")) else object)
    return df


def _events(path: Path, notes: list[str]) -> pd.DataFrame:
    if not path.is_file():
        notes.append(f"{path.name} is missing")
        return pd.DataFrame(columns=list(EVENT_COLUMNS))
    # keep "" as "" (not NaN): event labels are built from `detail` and `target`
    text_cols = {c: str for c in ("kind", "target", "detail", "frontend")}
    try:
        df = pd.read_csv(path, keep_default_na=False, na_values=[], dtype=text_cols)
    except (ValueError, OSError) as e:  # pandas' parser and decoding errors are ValueErrors
        raise UserError(f"{path}: not a readable events CSV: {_first_line(e)}") from None
    missing = [c for c in REQUIRED_EVENT_COLUMNS if c not in df.columns]
    if missing:
        raise UserError(f"{path}: not an events CSV: expected the columns {', '.join(REQUIRED_EVENT_COLUMNS)}; "
                        f"missing {', '.join(missing)}")
    for c in EVENT_COLUMNS:
        if c not in df.columns:
            df[c] = ""
    at_s = pd.to_numeric(df["at_s"], errors="coerce")
    if at_s.isna().any():
        bad = df["at_s"][at_s.isna()].iloc[0]
        raise UserError(f"{path}: at_s must be seconds; row {int(at_s.isna().to_numpy().argmax()) + 2} has {bad!r}")
    df["at_s"] = at_s
    df["rate_rps"] = pd.to_numeric(df["rate_rps"], errors="coerce")
    df["repeat"] = pd.to_numeric(df["repeat"], errors="coerce").fillna(0).astype(int)
    for c in ("kind", "target", "detail", "frontend"):
        df[c] = df[c].astype(str)
    return df


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _num(x: Any) -> float | None:
    if x is None or isinstance(x, bool):
        return None
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(v) else v


def _failover(d: dict[str, Any]) -> FailoverStats:
    return FailoverStats(
        event=str(d.get("event", "")),
        at_s=_num(d.get("at_s")) or 0.0,
        lost=int(d.get("lost") or 0),
        error_window_s=_num(d.get("error_window_s")) or 0.0,
        recovery_s=_num(d.get("recovery_s")),
        pre_event_p99_s=_num(d.get("pre_event_p99_s")),
    )


def _theory(raw: Any) -> tuple[dict[str, Any], ...]:
    if isinstance(raw, dict):
        return (raw,)
    if isinstance(raw, list):
        return tuple(t for t in raw if isinstance(t, dict))
    return ()


def frontend_stats(name: str, d: dict[str, Any]) -> FrontendStats:
    latency = d.get("latency_s") or {}
    return FrontendStats(
        name=name,
        requests=int(d.get("requests") or 0),
        ok=int(d.get("ok") or 0),
        errors={str(k): int(v) for k, v in (d.get("errors") or {}).items() if v},
        achieved_rps=_num(d.get("achieved_rps")),
        ok_rps=_num(d.get("ok_rps")),
        latency_s={k: _num(latency.get(k)) for k in ("mean", "p50", "p90", "p99", "p999", "max")},
        pod_share={str(k): float(v) for k, v in (d.get("pod_share") or {}).items()},
        failover=tuple(_failover(f) for f in d.get("failover") or []),
        generator_saturated=bool(d.get("generator_saturated", False)),
        saturation_reason=d.get("saturation_reason") or None,
        cpu_s={str(k): float(v) for k, v in (d.get("cpu_s") or {}).items() if _num(v) is not None},
        repeats=int(d.get("repeats") or 1),
        complete=bool(d.get("complete", True)),
        theory=_theory(d.get("theory")),
        spread=dict(d.get("spread") or {}),
        zero_load=dict(d.get("zero_load") or {}),
        host_cpu={str(k): float(v) for k, v in (d.get("host_cpu") or {}).items() if _num(v) is not None},
        ran_s=_num(d.get("ran_s")),
        latency_ci={k: from_json(v) for k, v in (d.get("latency_ci_s") or {}).items() if k in STATS},
    )


def _phase(d: dict[str, Any]) -> PhaseStats:
    name = str(d.get("frontend", "?"))
    return PhaseStats(
        frontend=name,
        rate_rps=_num(d.get("rate_rps")) or 0.0,
        repeat=int(d.get("repeat") or 0),
        complete=bool(d.get("complete", False)),
        error=d.get("error") or None,
        stats=frontend_stats(name, d) if "requests" in d else None,
    )


# -- selections the plots and the narrative share --------------------------------------------------
def phase_mask(
    df: pd.DataFrame, frontend: str, rate_rps: float | None, repeat: int | None = None
) -> pd.Series:
    mask = df["frontend"].astype(str) == frontend
    if rate_rps is not None:
        mask &= (df["rate_rps"].astype(float) - rate_rps).abs() < 1e-9
    if repeat is not None:
        mask &= df["repeat"].astype(int) == repeat
    return mask


def first_repeat(results: Results, frontend: str) -> int | None:
    reps = [p.repeat for p in results.phases if p.frontend == frontend and p.rate_rps == results.first_rate]
    return min(reps) if reps else None
