"""What the load generator is asked to do: plain, frozen, validated data.

A `LoadSpec` crosses a process boundary (parent -> worker) as a JSON object, so it has
`to_dict()` / `from_dict()`; the target must already be a loopback `HostPort` (names are
resolved by the caller, see :mod:`lbbench.load.target`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Literal

from lbbench.netaddr import HostPort, require_loopback

ConnectionKind = Literal["close", "keepalive"]
Arrivals = Literal["poisson", "constant"]


@dataclass(frozen=True)
class ConnectionMode:
    """`close`: a new TCP connection per request; `keepalive`: a pool of `pool` connections in total."""

    kind: ConnectionKind
    pool: int = 0

    def __post_init__(self) -> None:
        if self.kind not in ("close", "keepalive"):
            raise ValueError(f"connection mode must be 'close' or 'keepalive:K', got {self.kind!r}")
        if self.kind == "keepalive" and self.pool < 1:
            raise ValueError(f"keepalive needs a pool of at least 1 connection, got {self.pool}")
        if self.kind == "close" and self.pool != 0:
            raise ValueError("'close' mode takes no pool size")

    @classmethod
    def parse(cls, text: str) -> ConnectionMode:
        """'close' or 'keepalive:K' (K persistent connections in total)."""
        kind, sep, count = text.strip().partition(":")
        if kind == "close" and not sep:
            return cls("close")
        if kind == "keepalive" and sep:
            try:
                return cls("keepalive", int(count))
            except ValueError:
                pass
        raise ValueError(f"expected 'close' or 'keepalive:K' (K >= 1 connections), got {text!r}")

    def __str__(self) -> str:
        return "close" if self.kind == "close" else f"keepalive:{self.pool}"


@dataclass(frozen=True)
class RateStep:
    """From `at_s` on, the rate is `rate_rps`.

    `ramp=False`: the rate jumps at `at_s`. `ramp=True`: the rate moves linearly from the
    previous breakpoint (t=0 and `LoadSpec.rate_rps`, or the previous step) to `rate_rps`,
    reaching it at `at_s`.
    """

    at_s: float
    rate_rps: float
    ramp: bool = False


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
