"""One backend (pod) as the L7 proxy sees it: state, in-flight count, idle connections, counters.

State is a handful of flags so that the balancer's eligibility test is one attribute read:
`usable` is recomputed whenever `down` (active health check), `ejected` (passive outlier
detection) or `draining` (removed from Endpoints, finishing its in-flight requests) changes.
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING

from lbbench.model.service import Endpoint

if TYPE_CHECKING:
    from lbbench.frontends.proxy.upstream import UpstreamConnection

# Failure kinds an attempt on a backend can end with.
CONNECT_FAILED = "connect_failed"  # refused, unreachable or connect timeout: nothing was sent
RESET = "reset"  # connection lost before any response byte
RESET_AFTER = "reset_after"  # connection lost in the middle of a response
TIMEOUT = "timeout"  # no response byte within server_timeout
PROTOCOL = "protocol"  # the backend answered something that is not HTTP/1.x
BAD_STATUS = "5xx"  # a 5xx response: counts for passive ejection, never retried
UNREACHABLE = "unreachable"  # the checks can no longer reach the backend: no answer will ever come

PEAK_EWMA_DECAY_S = 10.0  # as Finagle and Linkerd
PEAK_EWMA_PENALTY = 1e6  # cost of a backend with requests in flight and no latency sample yet


class Backend:
    """A pod behind a Service, with what the proxy knows and counts about it."""

    __slots__ = (
        "addr",
        "connect_failures",
        "conns",
        "consecutive_failures",
        "down",
        "draining",
        "ejected",
        "ejected_until",
        "ejections",
        "endpoint",
        "ewma_s",
        "ewma_stamp",
        "failures",
        "health_fail",
        "health_ok",
        "health_streak",
        "idle",
        "in_flight",
        "maxconn",
        "name",
        "requests",
        "resets",
        "responses",
        "timeouts",
        "usable",
    )

    def __init__(self, endpoint: Endpoint, maxconn: int) -> None:
        self.endpoint = endpoint
        self.addr = (endpoint.ip, endpoint.port)
        self.name = endpoint.pod or f"{endpoint.ip}:{endpoint.port}"
        self.maxconn = maxconn
        self.in_flight = 0
        self.usable = True
        self.down = False
        self.ejected = False
        self.draining = False
        self.ejected_until = 0.0
        self.consecutive_failures = 0
        self.health_streak = 0  # > 0: consecutive passed checks, < 0: consecutive failed checks
        self.idle: list[UpstreamConnection] = []
        self.conns: set[UpstreamConnection] = set()
        self.ewma_s = 0.0
        self.ewma_stamp = time.monotonic()
        self.requests = self.responses = self.failures = self.connect_failures = 0
        self.resets = self.timeouts = self.ejections = self.health_ok = self.health_fail = 0

    def refresh(self) -> None:
        self.usable = not (self.down or self.ejected or self.draining)

    @property
    def has_room(self) -> bool:
        return self.maxconn == 0 or self.in_flight < self.maxconn

    @property
    def state(self) -> str:
        if self.draining:
            return "draining"
        if self.down:
            return "down"
        if self.ejected:
            return "ejected"
        return "up"

    def observe_latency(self, rtt_s: float, now: float) -> None:
        """Peak-EWMA: jump to a slower sample at once, decay towards faster ones."""
        if rtt_s > self.ewma_s:
            self.ewma_s = rtt_s
        else:
            dt = now - self.ewma_stamp
            w = math.exp(-dt / PEAK_EWMA_DECAY_S) if dt > 0.0 else 1.0
            self.ewma_s = self.ewma_s * w + rtt_s * (1.0 - w)
        self.ewma_stamp = now

    def load_cost(self, now: float) -> float:
        self.observe_latency(0.0, now)  # idle time lets a once-slow backend win again
        if self.ewma_s == 0.0 and self.in_flight:
            return PEAK_EWMA_PENALTY + self.in_flight
        return self.ewma_s * (self.in_flight + 1)

    def close_idle(self) -> None:
        idle, self.idle = self.idle, []
        for conn in idle:
            conn.close()

    def snapshot(self) -> dict[str, object]:
        return {
            "pod": self.endpoint.pod, "addr": f"{self.endpoint.ip}:{self.endpoint.port}",
            "node": self.endpoint.node, "state": self.state, "in_flight": self.in_flight,
            "maxconn": self.maxconn, "requests": self.requests, "responses": self.responses,
            "failures": self.failures, "connect_failures": self.connect_failures, "resets": self.resets,
            "timeouts": self.timeouts, "consecutive_failures": self.consecutive_failures,
            "ejections": self.ejections, "health_ok": self.health_ok, "health_fail": self.health_fail,
            "idle_connections": len(self.idle), "connections": len(self.conns),
            "ewma_ms": round(self.ewma_s * 1e3, 3),
        }
