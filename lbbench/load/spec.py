"""What the load generator is asked to do: plain, frozen, validated data.

A `LoadSpec` crosses a process boundary (parent -> worker) as a JSON object, so it has
`to_dict()` / `from_dict()`; the target must already be a loopback `HostPort` (names are
resolved by the caller, see :mod:`lbbench.load.target`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Literal

from lbbench.model.addresses import HostPort, require_loopback
from lbbench.model.load import ConnectionMode, RateStep

Arrivals = Literal["poisson", "constant"]


@dataclass(frozen=True)
class LoadSpec:
    target: HostPort
    path: str = "/"
    host_header: str | None = None
    rate_rps: float = 100.0
    duration_s: float = 10.0
    arrivals: Arrivals = "poisson"
    steps: tuple[RateStep, ...] = ()
    connections: ConnectionMode = ConnectionMode("close")
    workers: int = 0  # 0 = auto (enough to keep lateness low, at most os.cpu_count())
    closed_loop_users: int = 0  # > 0 = closed loop with that many users
    think_time_s: float = 0.0
    connect_timeout_s: float = 1.0
    timeout_s: float = 10.0
    seed: int = 0
    record_rows: bool = True
    lateness_threshold_s: float = 0.002
    # This process sends part `part_index` of `part_count` of the one schedule (every
    # part_count-th request, or closed-loop user): several generators, e.g. the pods of a
    # Kubernetes Job, split one run and their rows are merged afterwards.
    part_index: int = 0
    part_count: int = 1
    # Off everywhere but `lbbench load --allow-remote` inside a real cluster: loopback only.
    allow_remote: bool = False

    def __post_init__(self) -> None:
        if not self.allow_remote:
            require_loopback(self.target.host, "load target")
        if not 0 < self.target.port <= 65535:
            raise ValueError(f"target port must be 1-65535, got {self.target.port}")
        if not self.path.startswith("/") or any(c in self.path for c in " \r\n"):
            raise ValueError(f"path must start with '/' and contain no spaces or newlines, got {self.path!r}")
        _positive("duration_s", self.duration_s)
        _positive("connect_timeout_s", self.connect_timeout_s)
        _positive("timeout_s", self.timeout_s)
        _positive("lateness_threshold_s", self.lateness_threshold_s)
        if self.arrivals not in ("poisson", "constant"):
            raise ValueError(f"arrivals must be 'poisson' or 'constant', got {self.arrivals!r}")
        if self.closed_loop_users < 0 or self.workers < 0:
            raise ValueError("workers and closed_loop_users must be >= 0")
        if not math.isfinite(self.think_time_s) or self.think_time_s < 0:
            raise ValueError(f"think_time_s must be >= 0, got {self.think_time_s}")
        if not 0 <= self.part_index < self.part_count:
            raise ValueError(f"part must be I/P with 0 <= I < P, got {self.part_index}/{self.part_count}")
        if not self.closed_loop:
            _positive("rate_rps", self.rate_rps)
            self._check_steps()

    def _check_steps(self) -> None:
        last = 0.0
        for step in self.steps:
            if not math.isfinite(step.at_s) or step.at_s < last or (step.ramp and step.at_s <= last):
                raise ValueError(f"rate steps must have increasing at_s >= 0, got {step}")
            if not math.isfinite(step.rate_rps) or step.rate_rps < 0:
                raise ValueError(f"rate step rates must be >= 0, got {step}")
            last = step.at_s

    @property
    def closed_loop(self) -> bool:
        return self.closed_loop_users > 0

    @property
    def mode(self) -> Literal["open", "closed"]:
        return "closed" if self.closed_loop else "open"

    @property
    def host(self) -> str:
        """The Host header: the given name, else IP:PORT."""
        return self.host_header or str(self.target)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["target"] = str(self.target)
        d["connections"] = str(self.connections)
        d["steps"] = [asdict(s) for s in self.steps]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LoadSpec:
        d = dict(d)
        host, _, port = str(d.pop("target")).rpartition(":")
        return cls(
            target=HostPort(host, int(port)),
            connections=ConnectionMode.parse(str(d.pop("connections"))),
            steps=tuple(RateStep(**s) for s in d.pop("steps")),
            **d,
        )


def _positive(name: str, value: float) -> None:
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be > 0, got {value}")
