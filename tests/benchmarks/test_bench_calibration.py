"""The yardstick of the regression gate: a fixed pure-Python workload that never changes.

The gate divides every benchmark's time by this workload's, measured right around it
(conftest.py; this test is the fallback for files without that), so a machine that is slower
(a CI runner, a busy neighbour, a half-speed spell) does not look like a regression. Do not
optimise or alter it: the committed baseline is expressed in its units.
"""

from __future__ import annotations

from pytest_benchmark.fixture import BenchmarkFixture

HEADERS = [b"content-type", b"content-length", b"x-pod", b"x-pod-ip", b"x-queue-ms", b"x-service-ms", b"date",
           b"server"]


def workload() -> int:
    """Bytes splitting, dict updates, small calls: the mix of lbbench's per-request Python code."""
    seen: dict[bytes, int] = {}
    total = 0
    for i in range(400):
        name = HEADERS[i % len(HEADERS)]
        line = b"%s: %d\r\n" % (name, i)
        key, _, value = line.partition(b":")
        seen[key] = seen.get(key, 0) + int(value.strip())
        total += len(key)
    return total + len(seen)


def test_calibration(benchmark: BenchmarkFixture) -> None:
    assert benchmark(workload) > 0
