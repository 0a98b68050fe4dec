"""Numbers the report derives from the raw rows (beyond summary.json): where requests waited."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from lbbench.report.loader import Results, phase_mask
from lbbench.results.files import is_ok


@dataclass(frozen=True)
class QueueStats:
    """Where a front end's successful requests spent their time (ms), at the first rate, repeats merged.

    pod_wait: the pod's own queue (`x-queue-ms`); service: the pod's service time; outside: the rest
    of the latency (client, front end, its queue, the network), i.e. latency - pod wait - service.
    proxy_queue: the front end's own queue length sampled every 100 ms (None: not sampled).
    """

    frontend: str
    n: int
    pod_wait_mean_ms: float | None
    pod_wait_p99_ms: float | None
    service_mean_ms: float | None
    outside_mean_ms: float | None
    outside_p99_ms: float | None
    proxy_queue_mean: float | None
    proxy_queue_max: float | None

    @property
    def queue_at(self) -> str:
        """'pods', 'front end' or '' (unknown), by where the mean request waited longer."""
        if self.pod_wait_mean_ms is None or self.outside_mean_ms is None:
            return ""
        return "front end" if self.outside_mean_ms > self.pod_wait_mean_ms else "pods"


def _mean(a: np.ndarray) -> float | None:
    return float(a.mean()) if a.size else None


def _p99(a: np.ndarray) -> float | None:
    return float(np.quantile(a, 0.99)) if a.size else None


def queue_stats(results: Results, frontend: str) -> QueueStats:
    rows = results.requests
    rows = rows.loc[phase_mask(rows, frontend, results.first_rate)] if len(rows) else rows
    ok = rows.loc[is_ok(rows)] if len(rows) else rows
    known = ok.dropna(subset=["queue_ms", "service_ms", "latency_s"]) if len(ok) else ok
    wait = known["queue_ms"].to_numpy(dtype=float) if len(known) else np.array([])
    service = known["service_ms"].to_numpy(dtype=float) if len(known) else np.array([])
    outside = (
        (known["latency_s"].to_numpy(dtype=float) * 1e3 - wait - service) if len(known) else np.array([])
    )
    pq_mean, pq_max = _proxy_queue(results, frontend)
    return QueueStats(
        frontend,
        int(wait.size),
        _mean(wait),
        _p99(wait),
        _mean(service),
        _mean(outside),
        _p99(outside),
        pq_mean,
        pq_max,
    )


def _proxy_queue(results: Results, frontend: str) -> tuple[float | None, float | None]:
    ts = results.timeseries
    if "queue_len" not in ts.columns or not len(ts):
        return None, None
    q = ts.loc[phase_mask(ts, frontend, results.first_rate), "queue_len"].dropna()
    if not len(q):
        return None, None
    return float(q.mean()), float(q.max())


def fmt_opt(v: float | None, spec: str = ".3g") -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)
