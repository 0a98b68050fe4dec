"""Median and spread of repeated measurements; ratios taken round by round."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import TypedDict

UNSTABLE_SPREAD_PCT = 20.0  # (max - min) / median above this: the figure "may be unstable"


class Stat(TypedDict):
    median: float
    min: float
    max: float
    n: int
    spread_pct: float  # (max - min) / median, in percent; 0 for one value
    values: list[float]


def stat(values: Sequence[float]) -> Stat:
    """Median, min, max and spread of `values` (at least one, all finite)."""
    vals = [float(v) for v in values]
    if not vals or not all(math.isfinite(v) for v in vals):
        raise ValueError(f"stat needs finite values, got {vals}")
    med = statistics.median(vals)
    spread = (max(vals) - min(vals)) / abs(med) * 100 if med else 0.0
    return Stat(median=med, min=min(vals), max=max(vals), n=len(vals), spread_pct=round(spread, 2),
                values=[round(v, 6) for v in vals])


def paired_ratio(num: Sequence[float], den: Sequence[float]) -> Stat | None:
    """Ratio of two peers measured in the same interleaved rounds, round by round.

    Pairing by round cancels drift that hits both peers of a round alike; rounds where the
    denominator is zero are left out. None when no round is usable.
    """
    pairs = [n / d for n, d in zip(num, den, strict=False) if d > 0 and math.isfinite(n)]
    return stat(pairs) if pairs else None


def is_unstable(s: Stat) -> bool:
    return s["n"] > 1 and s["spread_pct"] > UNSTABLE_SPREAD_PCT
