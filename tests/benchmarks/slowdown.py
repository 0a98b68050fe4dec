"""The test-only hook that slows one benchmark down on purpose (used by conftest.py).

``LBBENCH_BENCH_SLOWDOWN="NAME=N"`` makes every benchmark whose test id contains NAME run
its benchmarked function N times per call, i.e. an N-fold regression of exactly that hot
path. It exists to show that the regression gate (`run_gate.py`) catches a 2x slowdown;
it is read only by the benchmark fixture, never by lbbench itself.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

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


class SlowedBenchmark(BenchmarkFixture):
    """The benchmark fixture, except that the timed function runs `slowdown` times per call.

    pytest-benchmark insists on its own fixture type, so the live fixture's class is swapped
    for this subclass rather than wrapped.
    """

    slowdown = 1

    def __call__(self, function_to_benchmark: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        factor = self.slowdown

        def slowed(*a: Any, **k: Any) -> Any:
            for _ in range(factor - 1):
                function_to_benchmark(*a, **k)
            return function_to_benchmark(*a, **k)

        return super().__call__(slowed, *args, **kwargs)  # type: ignore[no-untyped-call]
