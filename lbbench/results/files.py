"""The results folder and its versioned summary schema (documented in results/README.md).

Layout of `results/<UTC timestamp>-<config name>/`:
  config.toml          the config as given (resolved values are in summary.json "config")
  requests.parquet     one row per request, with `frontend`, `rate_rps`, `repeat`
  events.csv           at_s, kind, target, detail, frontend, rate_rps, repeat
  timeseries.parquet   100 ms buckets per phase: rps, ok, errors by kind, p50/p99, queue, endpoints
  samples.parquet      the front ends' counters sampled every 100 ms
  summary.json         schema 1, see `summarise`
  frontends/<name>/    front-end artifacts (rulesets, rendered configs)
  plots/*.png, report.html, report.md

Definitions (per front end, per event of the timeline):
  lost            requests whose intended send time falls between the event and recovery and
                  that did not get a 2xx
  error_window_s  first to last failure (by intended send time) after the event
  recovery_s      event until every 100 ms bucket is error-free and p99 is within 2x the
                  pre-event p99 (null: never recovered before the end of the run)
"""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lbbench import __version__
from lbbench.results.uncertainty import intervals_json

SCHEMA = 1
BUCKET_S = 0.1
QUANTILES = {"p50": 0.5, "p90": 0.9, "p99": 0.99, "p999": 0.999}


def new_results_dir(base: Path, config_name: str) -> Path:
    """A fresh folder name under `base` (created by lbbench.results.writer.writable_folder)."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path = base / f"{stamp}-{config_name}"
    n = 1
    while path.exists():
        n += 1
        path = base / f"{stamp}-{config_name}-{n}"
    return path


def metadata(seed: int, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    uname = platform.uname()
    meta: dict[str, Any] = {
        "lbbench_version": __version__,
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "kernel": f"{uname.system} {uname.release}",
        "machine": uname.machine,
        "hostname": uname.node,
        "cpu_count": os.cpu_count(),
        "seed": seed,
        "started_utc": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    meta.update(extra or {})
    return meta


def latency_stats(latency_s: pd.Series) -> dict[str, float | None]:
    """Exact statistics from raw samples (never averaged percentiles)."""
    values = latency_s.dropna().to_numpy(dtype=float)
    if values.size == 0:
        return {"mean": None, **{k: None for k in QUANTILES}, "max": None}
    qs = np.quantile(values, list(QUANTILES.values()))
    return {"mean": float(values.mean()), **{k: float(v) for k, v in zip(QUANTILES, qs, strict=True)},
            "max": float(values.max())}


def is_ok(rows: pd.DataFrame) -> pd.Series:
    return (rows["error"] == "") & (rows["status"] >= 200) & (rows["status"] < 300)


def error_kinds(rows: pd.DataFrame) -> dict[str, int]:
    failed = rows.loc[~is_ok(rows)]
    kinds = failed["error"].where(failed["error"] != "", "http_other")
    return {str(k): int(v) for k, v in kinds.value_counts().sort_index().items()}


def buckets(rows: pd.DataFrame, duration_s: float) -> pd.DataFrame:
    """100 ms buckets by intended send time: offered, ok, errors by kind, p50/p99 of ok+failed."""
    n = max(1, math.ceil(duration_s / BUCKET_S))
    idx = np.clip((rows["intended_s"].to_numpy() / BUCKET_S).astype(int), 0, n - 1)
    df = rows.assign(bucket=idx, ok=is_ok(rows))
    g = df.groupby("bucket")
    out = pd.DataFrame({"t_s": np.arange(n) * BUCKET_S})
    out["requests"] = g.size().reindex(range(n), fill_value=0).to_numpy()
    out["ok"] = g["ok"].sum().reindex(range(n), fill_value=0).to_numpy()
    out["errors"] = out["requests"] - out["ok"]
    out["rps"] = out["requests"] / BUCKET_S
    out["p50_s"] = g["latency_s"].quantile(0.5).reindex(range(n)).to_numpy()
    out["p99_s"] = g["latency_s"].quantile(0.99).reindex(range(n)).to_numpy()
    failed = df.loc[~df["ok"]]
    if len(failed):
        by_kind = failed.groupby(["bucket", "error"]).size().unstack(fill_value=0)
        for kind in by_kind.columns:
            out[f"err_{kind or 'http_other'}"] = by_kind[kind].reindex(range(n), fill_value=0).to_numpy()
    return out


def failover(rows: pd.DataFrame, events: pd.DataFrame, duration_s: float) -> list[dict[str, Any]]:
    """Lost requests, error window and recovery time for each timeline event."""
    out = []
    fired = events.loc[events["kind"] == "event"].sort_values("at_s")
    ok = is_ok(rows)
    b = buckets(rows, duration_s)
    for _, ev in fired.iterrows():
        at = float(ev["at_s"])
        before = rows.loc[ok & (rows["intended_s"] >= max(0.0, at - 5.0)) & (rows["intended_s"] < at), "latency_s"]
        pre_p99 = float(before.quantile(0.99)) if len(before) else math.inf
        after = b.loc[b["t_s"] >= math.floor(at / BUCKET_S) * BUCKET_S]
        bad = (after["errors"] > 0) | (after["p99_s"] > 2 * pre_p99)
        if bad.any():
            last_bad = after.loc[bad, "t_s"].max()
            recovered_at = last_bad + BUCKET_S
            recovery = recovered_at - at if recovered_at < duration_s - 1e-9 else None
        else:
            recovered_at, recovery = at, 0.0
        end = recovered_at if recovery is not None else duration_s
        window = rows.loc[(rows["intended_s"] >= at) & (rows["intended_s"] <= end)]
        failed_after = rows.loc[~ok & (rows["intended_s"] >= at), "intended_s"]
        out.append({
            "event": f"{ev['detail']} {ev['target']}",
            "at_s": round(at, 6),
            "lost": int((~is_ok(window)).sum()),
            "error_window_s": float(failed_after.max() - failed_after.min()) if len(failed_after) else 0.0,
            "recovery_s": None if recovery is None else round(float(recovery), 3),
            "pre_event_p99_s": None if math.isinf(pre_p99) else pre_p99,
        })
    return out


def load_ran_s(duration_s: float, stopped: bool, actual_s: float) -> float:
    """Seconds the load ran: the configured duration, or until its last send when a stop cut it short."""
    return actual_s if stopped else duration_s


def frontend_summary(rows: pd.DataFrame, events: pd.DataFrame, duration_s: float,
                     cpu_s: dict[str, float], generator: dict[str, Any], ran_s: float | None = None) -> dict[str, Any]:
    """The numbers of one phase (or of merged repeats); rates are over `ran_s` (default `duration_s`)."""
    ok = is_ok(rows)
    pods = rows.loc[ok & (rows["pod"] != ""), "pod"].value_counts(normalize=True).sort_index()
    ran = duration_s if ran_s is None else ran_s
    return {
        "requests": len(rows),
        "ok": int(ok.sum()),
        "errors": error_kinds(rows),
        "ran_s": round(ran, 6),
        "achieved_rps": float(len(rows) / ran) if ran > 0 else 0.0,
        "ok_rps": float(ok.sum() / ran) if ran > 0 else 0.0,
        "latency_s": latency_stats(rows.loc[ok, "latency_s"]),
        "latency_all_s": latency_stats(rows["latency_s"]),
        # 95% intervals by batch means over the requests in send order (lbbench.results.uncertainty)
        "latency_ci_s": intervals_json(rows.loc[ok, "latency_s"].to_numpy(dtype=float)),
        "latency_all_ci_s": intervals_json(rows["latency_s"].to_numpy(dtype=float)),
        "pod_share": {str(k): float(v) for k, v in pods.items()},
        "failover": failover(rows, events, duration_s),
        "generator_saturated": bool(generator.get("generator_saturated", False)),
        "saturation_reason": generator.get("saturation_reason", ""),
        "lateness_s": generator.get("lateness_s", {}),
        "cpu_s": {k: round(v, 3) for k, v in cpu_s.items()},
    }


def merge_repeats(entry: dict[str, Any], per: list[dict[str, Any]]) -> dict[str, Any]:
    """Fold the per-repeat entries into a front end's merged `entry` (stats already from merged rows).

    Failover is judged per repeat (each has its own timeline), so events are listed, never averaged;
    the spread across repeats is given when there are several.
    """
    entry["failover"] = [f for p in per for f in p["failover"]]
    entry["achieved_rps"] = spread([p["achieved_rps"] for p in per])["mean"]
    entry["repeats"] = len(per)
    if len(per) > 1:
        entry["spread"] = {"achieved_rps": spread([p["achieved_rps"] for p in per]),
                           "p99_s": spread([p["latency_s"]["p99"] for p in per if p["latency_s"]["p99"]]),
                           "lost": spread([float(sum(f["lost"] for f in p["failover"])) for p in per])}
    return entry


def spread(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"mean": None, "stdev": None, "min": None, "max": None}
    return {"mean": statistics.fmean(values), "stdev": statistics.stdev(values) if len(values) > 1 else 0.0,
            "min": min(values), "max": max(values)}


def json_text(data: Any) -> str:
    return json.dumps(data, indent=2, sort_keys=False, default=_json_default) + "\n"


def _json_default(o: Any) -> Any:
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return None if math.isnan(o) else float(o)
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def read_summary(folder: Path) -> dict[str, Any]:
    """summary.json as a dict; ValueError (naming the file) if it is not a summary of this schema."""
    data = json.loads((folder / "summary.json").read_text())
    if not isinstance(data, dict):
        raise ValueError(f"{folder}/summary.json: expected a JSON object (a results summary), "
                         f"got {type(data).__name__} {json.dumps(data)[:40]}")
    if data.get("schema") != SCHEMA:
        raise ValueError(f"{folder}/summary.json has schema {data.get('schema')!r}; this lbbench reads {SCHEMA}")
    return data
