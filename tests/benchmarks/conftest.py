"""Micro-benchmark fixtures: pytest-benchmark's `benchmark`, slowed on request (see slowdown.py)."""

from __future__ import annotations

import os

import pytest
from pytest_benchmark.fixture import BenchmarkFixture
from slowdown import SLOWDOWN_ENV, SlowedBenchmark, parse_slowdown


@pytest.fixture
def benchmark(benchmark: BenchmarkFixture, request: pytest.FixtureRequest) -> BenchmarkFixture:
    slow = parse_slowdown(os.environ.get(SLOWDOWN_ENV, ""))
    if slow is not None and slow[0] in request.node.nodeid and slow[1] > 1:
        benchmark.__class__ = SlowedBenchmark
        assert isinstance(benchmark, SlowedBenchmark)
        benchmark.slowdown = slow[1]
    return benchmark
