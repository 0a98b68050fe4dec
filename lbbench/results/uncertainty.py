"""Confidence intervals for latency statistics of one run, by batch means.

Requests in a queueing run are correlated: a request that arrives behind a busy spell waits
too, so the usual iid formulas (stdev / sqrt(n)) are far too narrow. Batch means cuts the
requests, in the order they were sent, into `BATCHES` contiguous batches, computes the
statistic in each, and takes the spread of those per-batch values: batches long compared to
a busy spell are nearly independent, so

    half-width = t(0.975, BATCHES - 1) * stdev(per-batch values) / sqrt(BATCHES)

around the statistic of the whole run (Law & Kelton, "Simulation Modeling and Analysis", 9.5.3).
A far quantile gets fewer batches (at least MIN_BATCHES, each with TAIL_PER_BATCH samples beyond
the quantile); the Student t of the batch count widens the interval accordingly.
A statistic is "too uncertain" (pyperf's word) when the half-width is above `CLAIM_REL` of the
value; the interval shrinks as 1/sqrt(run length), so the run length that would bring it
under that is (half-width / CLAIM_REL)^2 times the current one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats as sp_stats

METHOD = "batch means"
BATCHES = 20
LEVEL = 0.95
CLAIM_REL = 0.10  # a figure with a half-width above 10% of itself cannot carry a claim
# stat -> quantile (None: the mean)
STATS: dict[str, float | None] = {"mean": None, "p50": 0.5, "p99": 0.99, "p999": 0.999}
MIN_BATCHES = 5
TAIL_PER_BATCH = 2  # a batch needs this many samples beyond a quantile for its per-batch value to mean anything


@dataclass(frozen=True)
class Interval:
    value: float
    lo: float
    hi: float
    batches: int = BATCHES

    @property
    def half_width(self) -> float:
        return (self.hi - self.lo) / 2

    @property
    def rel_half_width(self) -> float:
        return self.half_width / abs(self.value) if self.value else math.inf

    def contains(self, x: float) -> bool:
        return self.lo <= x <= self.hi

    def longer_run_factor(self, target_rel: float = CLAIM_REL) -> float:
        """How many times longer the run must be for the half-width to fall to `target_rel`."""
        return (self.rel_half_width / target_rel) ** 2

    def to_dict(self) -> dict[str, float]:
        return {"value": self.value, "lo": self.lo, "hi": self.hi, "batches": self.batches}


def _statistic(values: np.ndarray, q: float | None) -> float:
    return float(values.mean()) if q is None else float(np.quantile(values, q))


def batch_count(n: int, q: float | None, most: int = BATCHES) -> int:
    """As many batches as `most`, fewer for a far quantile so each batch keeps TAIL_PER_BATCH beyond it."""
    beyond = n if q is None else n * (1.0 - q)
    return min(most, int(beyond // TAIL_PER_BATCH))


def interval(values: np.ndarray, q: float | None, batches: int = BATCHES, level: float = LEVEL) -> Interval | None:
    """The batch-means interval of the mean (q None) or the q-quantile; `values` in send order.

    None when the run is too short: fewer than MIN_BATCHES batches with TAIL_PER_BATCH beyond the quantile.
    """
    values = np.asarray(values, dtype=float)
    values = values[~np.isnan(values)]
    k = batch_count(values.size, q, batches)
    if k < MIN_BATCHES:
        return None
    size = values.size // k
    parts = values[: size * k].reshape(k, size)
    per_batch = parts.mean(axis=1) if q is None else np.quantile(parts, q, axis=1)
    t = float(sp_stats.t.ppf(0.5 + level / 2, k - 1))
    half = t * float(per_batch.std(ddof=1)) / math.sqrt(k)
    value = _statistic(values, q)
    return Interval(value, value - half, value + half, k)


def latency_intervals(latency_s: np.ndarray) -> dict[str, Interval | None]:
    """mean, p50, p99, p999 of latencies given in send order."""
    return {name: interval(latency_s, q) for name, q in STATS.items()}


def intervals_json(latency_s: np.ndarray) -> dict[str, Any]:
    """The summary.json form: method, level, batches and {value, lo, hi} (or null) per statistic."""
    out: dict[str, Any] = {"method": METHOD, "level": LEVEL}
    for name, iv in latency_intervals(latency_s).items():
        out[name] = None if iv is None else iv.to_dict()
    return out


def from_json(d: Any) -> Interval | None:
    if not isinstance(d, dict):
        return None
    try:
        return Interval(float(d["value"]), float(d["lo"]), float(d["hi"]), int(d.get("batches", BATCHES)))
    except (KeyError, TypeError, ValueError):
        return None
