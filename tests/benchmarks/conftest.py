"""Micro-benchmark fixtures, and the test-only hook that slows one benchmark down on purpose.

``LBBENCH_BENCH_SLOWDOWN="NAME=N"`` makes every benchmark whose test id contains NAME run
its benchmarked function N times per call, i.e. an N-fold regression of exactly that hot
path. It exists to show that the regression gate (`run_gate.py`) catches a 2x slowdown;
it is read only here, never by lbbench itself.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import pytest
from pytest_benchmark.fixture import BenchmarkFixture

SLOWDOWN_ENV = "LBBENCH_BENCH_SLOWDOWN"


def parse_slowdown(text: str) -> tuple[str, int] | None:
    """'NAME=N' -> (NAME, N); empty -> None. Raises ValueError on anything else."""
    if not text.strip():
        return None
    name, sep, factor = text.partition("=")
    if not sep or not name.strip() or not factor.strip().isdigit() or int(factor) < 1:
        raise ValueError(f"{SLOWDOWN_ENV} must look like 'test_name=2', got {text!r}")
    return name.strip(), int(factor)


class SlowedBenchmark:
    """The benchmark fixture, except that the timed function runs `factor` times per call."""

    def __init__(self, inner: BenchmarkFixture, factor: int) -> None:
        self._inner = inner
        self._factor = factor

    def __call__(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        def slowed(*a: Any, **k: Any) -> Any:
            for _ in range(self._factor - 1):
                function(*a, **k)
            return function(*a, **k)

        return self._inner(slowed, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


@pytest.fixture
def benchmark(benchmark: BenchmarkFixture, request: pytest.FixtureRequest) -> BenchmarkFixture | SlowedBenchmark:
    slow = parse_slowdown(os.environ.get(SLOWDOWN_ENV, ""))
    if slow is not None and slow[0] in request.node.nodeid and slow[1] > 1:
        return SlowedBenchmark(benchmark, slow[1])
    return benchmark
