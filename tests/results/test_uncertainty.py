"""Batch-means intervals cover the truth about as often as they claim, on data with a known answer."""

from __future__ import annotations

import math

import numpy as np
from scipy.signal import lfilter

from lbbench.results.uncertainty import Interval, interval, intervals_json

RUNS = 300


def _ar1(rng: np.random.Generator, n: int, phi: float) -> np.ndarray:
    """A correlated series with mean 0 (like waits behind a busy spell): x_t = phi x_{t-1} + e_t."""
    e = rng.standard_normal(n)
    e[0] /= math.sqrt(1 - phi**2)  # start in the stationary distribution
    return np.asarray(lfilter([1.0], [1.0, -phi], e))


def _coverage(truth: float, make: object, q: float | None) -> float:
    rng = np.random.default_rng(17)
    hits = 0
    for _ in range(RUNS):
        iv = interval(make(rng), q)  # type: ignore[operator]
        assert iv is not None
        hits += iv.contains(truth)
    return hits / RUNS


def test_mean_of_correlated_series_is_covered_about_95_percent() -> None:
    cover = _coverage(0.0, lambda rng: _ar1(rng, 4000, 0.9), None)
    assert 0.90 <= cover <= 0.99, cover


def test_iid_formula_would_undercover_the_same_series() -> None:
    """The reason for batching: stdev/sqrt(n) on a correlated series misses the truth far too often."""
    rng = np.random.default_rng(17)
    hits = 0
    for _ in range(RUNS):
        x = _ar1(rng, 4000, 0.9)
        half = 1.96 * x.std(ddof=1) / math.sqrt(x.size)
        hits += abs(x.mean()) <= half
    assert hits / RUNS < 0.6


def test_p99_of_exponential_latencies_is_covered_about_95_percent() -> None:
    truth = 0.010 * math.log(100)  # the 99th percentile of exp(mean 10 ms)
    cover = _coverage(truth, lambda rng: rng.exponential(0.010, 20_000), 0.99)
    assert 0.88 <= cover <= 0.99, cover


def test_p50_of_exponential_latencies_is_covered_about_95_percent() -> None:
    truth = 0.010 * math.log(2)
    cover = _coverage(truth, lambda rng: rng.exponential(0.010, 5_000), 0.5)
    assert 0.90 <= cover <= 0.99, cover


def test_too_few_samples_beyond_a_quantile_give_no_interval() -> None:
    x = np.random.default_rng(1).exponential(0.01, 3000)
    assert interval(x, 0.999) is None  # 3 samples beyond p99.9: no batches to compare
    iv = interval(x, 0.99)
    assert iv is not None and iv.batches < 20


def test_longer_run_factor_and_json() -> None:
    iv = Interval(100.0, 80.0, 120.0)
    assert math.isclose(iv.rel_half_width, 0.2)
    assert math.isclose(iv.longer_run_factor(), 4.0)
    d = intervals_json(np.random.default_rng(2).exponential(0.01, 10_000))
    assert d["method"] == "batch means" and d["level"] == 0.95
    assert d["mean"]["lo"] < d["mean"]["value"] < d["mean"]["hi"]
