"""Micro-benchmark fixtures: pytest-benchmark's `benchmark`, slowed on request (see slowdown.py),
with the calibration workload measured right before and right after each benchmark.

This VM runs at half speed in spells of a second or two, invisible as steal. A yardstick
measured in one part of the run and a benchmark in another can then be 2x apart, which is
the size of regression the gate must catch. Measured around each benchmark, both see the same
machine; the gate divides by this paired figure (compare_baseline.py).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterator

import pytest
from pytest_benchmark.fixture import BenchmarkFixture
from slowdown import SLOWDOWN_ENV, SlowedBenchmark, parse_slowdown
from test_bench_calibration import workload

PAIRED_KEY = "calibration_min_s"
PAIRED_S = 0.25  # of calibration on each side of a benchmark
PAIRED_MIN_ROUNDS = 20


def calibration_min(seconds: float = PAIRED_S) -> float:
    """The calibration workload's fastest single call over `seconds` (the unit of the baseline)."""
    best = math.inf
    rounds = 0
    deadline = time.perf_counter() + seconds
    while rounds < PAIRED_MIN_ROUNDS or time.perf_counter() < deadline:
        t0 = time.perf_counter()
        workload()
        best = min(best, time.perf_counter() - t0)
        rounds += 1
    return best


@pytest.fixture
def benchmark(benchmark: BenchmarkFixture, request: pytest.FixtureRequest) -> Iterator[BenchmarkFixture]:
    slow = parse_slowdown(os.environ.get(SLOWDOWN_ENV, ""))
    if slow is not None and slow[0] in request.node.nodeid and slow[1] > 1:
        benchmark.__class__ = SlowedBenchmark
        assert isinstance(benchmark, SlowedBenchmark)
        benchmark.slowdown = slow[1]
    paired = "test_calibration" not in request.node.nodeid and not benchmark.disabled
    before = calibration_min() if paired else math.inf
    yield benchmark
    if paired:
        benchmark.extra_info[PAIRED_KEY] = min(before, calibration_min())
