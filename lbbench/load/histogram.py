"""A log-bucket histogram of durations: <= 0.5% relative error, mergeable by adding counts.

Buckets grow by 1% from 100 ns to ~3 hours, so sub-millisecond loopback latencies keep
their precision (Fortio's 1 ms floor would not). A quantile is the geometric middle of its
bucket, clamped to the exact min and max seen, so its relative error is at most
√1.01 - 1 ≈ 0.5%. Histograms from different workers merge exactly (counts add); quantiles
are always computed from merged counts, never averaged.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np
import numpy.typing as npt

LOWEST_S = 1e-7
HIGHEST_S = 1e4
GROWTH = 1.01


class LogHistogram:
    """Counts of values (seconds) in log buckets; bucket 0 holds values below `lowest_s`."""

    __slots__ = (
        "_inv_log_growth", "_inv_lowest", "counts", "growth", "lowest_s", "max", "min", "n_buckets", "sum",
    )

    def __init__(
        self,
        lowest_s: float = LOWEST_S,
        highest_s: float = HIGHEST_S,
        growth: float = GROWTH,
        *,
        n_buckets: int | None = None,
    ) -> None:
        if not (0 < lowest_s < highest_s and growth > 1):
            raise ValueError("need 0 < lowest_s < highest_s and growth > 1")
        self.lowest_s = lowest_s
        self.growth = growth
        # bucket i >= 1 covers [lowest * growth**(i-1), lowest * growth**i); the last one is open-ended
        self.n_buckets = n_buckets or math.ceil(math.log(highest_s / lowest_s) / math.log(growth)) + 2
        self.counts: npt.NDArray[np.int64] = np.zeros(self.n_buckets, dtype=np.int64)
        self._inv_lowest = 1.0 / lowest_s
        self._inv_log_growth = 1.0 / math.log(growth)
        self.sum = 0.0
        self.min = math.inf
        self.max = -math.inf

    # -- recording -------------------------------------------------------------------------
    def record(self, value_s: float) -> None:
        """Add one value (the hot path: one log, one increment)."""
        if value_s >= self.lowest_s:
            i = int(math.log(value_s * self._inv_lowest) * self._inv_log_growth) + 1
            if i >= self.n_buckets:
                i = self.n_buckets - 1
        else:
            i = 0
        self.counts[i] += 1
        self.sum += value_s
        if value_s < self.min:
            self.min = value_s
        if value_s > self.max:
            self.max = value_s

    def record_many(self, values_s: npt.ArrayLike) -> None:
        v = np.asarray(values_s, dtype=np.float64).ravel()
        v = v[~np.isnan(v)]
        if v.size == 0:
            return
        # record()'s bucket for every value, without boolean-mask copies: below `lowest_s` -> 0
        idx = (np.log(np.maximum(v, self.lowest_s) * self._inv_lowest) * self._inv_log_growth).astype(np.int64)
        idx += 1
        idx[v < self.lowest_s] = 0
        np.minimum(idx, self.n_buckets - 1, out=idx)
        self.counts += np.bincount(idx, minlength=self.n_buckets)
        self.sum += float(v.sum())
        self.min = min(self.min, float(v.min()))
        self.max = max(self.max, float(v.max()))

    # -- merging -----------------------------------------------------------------------------
    def same_layout(self, other: LogHistogram) -> bool:
        return (self.lowest_s, self.growth, self.n_buckets) == (other.lowest_s, other.growth, other.n_buckets)

    def merge(self, other: LogHistogram) -> None:
        """Add `other`'s counts into this one (exact)."""
        if not self.same_layout(other):
            raise ValueError("cannot merge histograms with different bucket layouts")
        self.counts += other.counts
        self.sum += other.sum
        self.min = min(self.min, other.min)
        self.max = max(self.max, other.max)

    def __add__(self, other: LogHistogram) -> LogHistogram:
        out = self.copy()
        out.merge(other)
        return out

    def copy(self) -> LogHistogram:
        out = self.empty_like()
        out.merge(self)
        return out

    def empty_like(self) -> LogHistogram:
        return LogHistogram(self.lowest_s, math.inf, self.growth, n_buckets=self.n_buckets)

    @classmethod
    def merged(cls, parts: Iterable[LogHistogram]) -> LogHistogram:
        out = cls()
        for p in parts:
            out.merge(p)
        return out

    # -- reading -----------------------------------------------------------------------------
    @property
    def count(self) -> int:
        return int(self.counts.sum())

    @property
    def mean(self) -> float:
        n = self.count
        return self.sum / n if n else math.nan

    def quantile(self, q: float) -> float:
        """The value at quantile `q` in [0, 1] (NaN when empty), like numpy's linear percentile."""
        return float(self.quantiles([q])[0])

    def quantiles(self, qs: Iterable[float]) -> npt.NDArray[np.float64]:
        q = np.asarray(list(qs), dtype=np.float64)
        if np.any((q < 0) | (q > 1)):
            raise ValueError("quantiles must be in [0, 1]")
        n = self.count
        if n == 0:
            return np.full(q.shape, math.nan)
        # numpy.percentile(method="linear"): interpolate between the samples of rank floor(h)
        # and floor(h) + 1, h = q (n - 1); each sample is its bucket's geometric middle
        h = q * (n - 1)
        below = np.floor(h)
        lo = self._rank_value(below)
        hi = self._rank_value(np.minimum(below + 1, n - 1))
        out = lo + (h - below) * (hi - lo)
        out[q == 0] = self.min
        out[q == 1] = self.max
        return out

    def _rank_value(self, rank: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        """The value of the sample with 0-based `rank` in sorted order, to within its bucket."""
        bucket = np.searchsorted(np.cumsum(self.counts), rank, side="right")
        mid = self.lowest_s * self.growth ** (bucket.astype(np.float64) - 0.5)
        mid = np.where(bucket == 0, self.min, mid)
        return np.clip(mid, self.min, self.max)

    # -- JSON ------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """A compact JSON-able form: only the non-empty buckets."""
        nz = np.flatnonzero(self.counts)
        return {
            "lowest_s": self.lowest_s,
            "growth": self.growth,
            "n_buckets": self.n_buckets,
            "count": self.count,
            "sum": self.sum,
            "min": self.min if self.count else None,
            "max": self.max if self.count else None,
            "index": nz.tolist(),
            "counts": self.counts[nz].tolist(),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LogHistogram:
        h = cls(float(d["lowest_s"]), math.inf, float(d["growth"]), n_buckets=int(d["n_buckets"]))
        h.counts[np.asarray(d["index"], dtype=np.int64)] = np.asarray(d["counts"], dtype=np.int64)
        h.sum = float(d["sum"])
        h.min = math.inf if d["min"] is None else float(d["min"])
        h.max = -math.inf if d["max"] is None else float(d["max"])
        return h

    def __repr__(self) -> str:
        if not self.count:
            return "LogHistogram(empty)"
        p50, p99 = self.quantiles([0.5, 0.99])
        return f"LogHistogram(n={self.count}, p50={p50:.6g}s, p99={p99:.6g}s, max={self.max:.6g}s)"
