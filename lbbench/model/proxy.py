"""Settings of a queueing L7 proxy, and the one list of balance names."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

Balance = Literal["round-robin", "random", "least-conn", "p2c", "peak-ewma"]
BALANCES: tuple[Balance, ...] = get_args(Balance)


@dataclass(frozen=True)
class HealthCheck:
    interval_s: float = 0.5
    timeout_s: float = 1.0
    fall: int = 2
    rise: int = 1
    path: str = "/healthz"


@dataclass(frozen=True)
class ProxySettings:
    """Settings of a queueing L7 proxy; reference proxies map them to their closest knobs."""

    maxconn: int = 1  # requests in flight per backend (0 = unlimited)
    max_queue: int = 10_000  # central FIFO bound; beyond it: 503 at once
    queue_timeout_s: float = 5.0  # waiting longer than this: 503
    balance: Balance = "round-robin"
    retries: int = 3  # connect failures retried on another backend
    retry_idempotent: bool = True  # also retry GET/HEAD reset before any response byte
    eject_after: int = 3  # consecutive failures -> passive ejection
    connect_timeout_s: float = 1.0
    server_timeout_s: float = 30.0
    client_timeout_s: float = 30.0
    health: HealthCheck = HealthCheck()
    # Proxy processes (l7-proxy only). N > 1: one queue per worker (N whole proxies on one listening
    # socket), not M/M/c; for throughput benchmarks. Theory models the single central queue (1).
    workers: int = 1
