"""The host's CPU as a whole: time stolen by the hypervisor, from /proc/stat.

On a virtual machine, steal is time its vCPUs were ready to run but the hypervisor ran something
else. A burst of it stalls every process at once (generator, pods, front end): the generator sends
late, the pods' timers overshoot, and the phase measured the host, not the system under test. The
run samples it with the front end's counters, and the report names the phases it hit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypedDict

STEAL_WARN = 0.10  # over any 1 s window: enough to stretch a 10 ms service time by a millisecond
WINDOW = 10  # samples of 100 ms


@dataclass(frozen=True)
class CpuTicks:
    steal: int
    total: int


class HostCpu(TypedDict):
    steal_fraction: float  # of all CPU time during the phase
    steal_max_1s: float  # the worst 1 s window


def read_cpu_ticks(path: str = "/proc/stat") -> CpuTicks | None:
    """The all-CPU line of /proc/stat, or None where there is none (not Linux, no /proc)."""
    try:
        with open(path, encoding="ascii") as f:
            fields = f.readline().split()
    except OSError:
        return None
    if len(fields) < 9 or fields[0] != "cpu":
        return None
    ticks = [int(v) for v in fields[1:]]
    # user nice system idle iowait irq softirq steal [guest guest_nice]: guest time is already in user
    return CpuTicks(steal=ticks[7], total=sum(ticks[:8]))


def steal_fraction(before: CpuTicks | None, after: CpuTicks | None) -> float | None:
    if before is None or after is None or after.total <= before.total:
        return None
    return (after.steal - before.steal) / (after.total - before.total)


def host_cpu(fractions: Sequence[float]) -> HostCpu | None:
    """Mean and worst 1 s window of per-sample steal fractions (equal-length samples)."""
    if not fractions:
        return None
    n = min(WINDOW, len(fractions))
    windows = [sum(fractions[i:i + n]) / n for i in range(len(fractions) - n + 1)]
    return HostCpu(steal_fraction=sum(fractions) / len(fractions), steal_max_1s=max(windows))
