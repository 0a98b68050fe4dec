"""A small sample-path simulator of N pods, written only to check lbbench.theory.predict.

Every pod serves FCFS with `slots` parallel servers, so a request's start time is fixed the moment
it is assigned (max of its arrival and the earliest free slot); no event calendar is needed. The
balancing policies mirror the models: per-request random split, round robin over one global stream,
power of two choices over two distinct pods (fewest requests in the pod, ties at random), and one
shared FIFO queue in front of all pods x slots servers.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from typing import Literal

import numpy as np

from lbbench.model.servicetime import ServiceTime

Policy = Literal["random", "round_robin", "p2c", "shared"]


@dataclass(frozen=True)
class SimResult:
    response_s: np.ndarray
    wait_s: np.ndarray

    @property
    def mean_s(self) -> float:
        return float(self.response_s.mean())

    @property
    def mean_wait_s(self) -> float:
        return float(self.wait_s.mean())

    @property
    def p_wait(self) -> float:
        return float((self.wait_s > 0).mean())

    def quantile(self, q: float) -> float:
        return float(np.quantile(self.response_s, q))


def arrival_times(rng: np.random.Generator, rate_rps: float, n: int, kind: str) -> np.ndarray:
    if kind == "poisson":
        return np.cumsum(rng.exponential(1 / rate_rps, n))
    if kind == "constant":
        return np.arange(1, n + 1) / rate_rps
    raise ValueError(kind)


def service_times(rng: np.random.Generator, service: ServiceTime, n: int) -> np.ndarray:
    """Vectorised twin of ServiceTime.sample."""
    if service.kind == "exp":
        return rng.exponential(service.mean_s, n)
    if service.kind == "const":
        return np.full(n, service.mean_s)
    if service.kind == "uniform":
        return rng.uniform(service.low_s, service.high_s, n)
    mu = np.log(service.mean_s) - service.sigma**2 / 2
    return rng.lognormal(mu, service.sigma, n)


def _fcfs_one(arrive: np.ndarray, serve: np.ndarray) -> np.ndarray:
    """Waits at one single-server FCFS pod, Lindley's recursion in closed form."""
    # W_n = P_n - min_{k<=n} P_k with P the running sum of (S_{k-1} - A_k gaps).
    if len(arrive) == 0:
        return arrive
    u = serve[:-1] - np.diff(arrive)
    p = np.concatenate(([0.0], np.cumsum(u)))
    return p - np.minimum.accumulate(p)  # exactly 0 for an arrival to an empty pod


def _fcfs_many(arrive: np.ndarray, serve: np.ndarray, servers: int) -> np.ndarray:
    """Waits at one FCFS station with `servers` parallel servers."""
    if servers == 1:
        return _fcfs_one(arrive, serve)
    free = [0.0] * servers
    wait = np.empty_like(arrive)
    for i, (a, s) in enumerate(zip(arrive.tolist(), serve.tolist(), strict=True)):
        b = max(a, free[0])
        heapq.heapreplace(free, b + s)
        wait[i] = b - a
    return wait


def _p2c_waits(rng: np.random.Generator, arrive: np.ndarray, serve: np.ndarray, pods: int, slots: int) -> np.ndarray:
    first = rng.integers(0, pods, len(arrive))
    second = (first + 1 + rng.integers(0, pods - 1, len(arrive))) % pods  # a distinct second pod
    coin = rng.random(len(arrive)) < 0.5
    free = [[0.0] * slots for _ in range(pods)]
    leave: list[list[float]] = [[] for _ in range(pods)]  # departure times of requests in the pod
    wait = np.empty_like(arrive)
    for i, (a, s) in enumerate(zip(arrive.tolist(), serve.tolist(), strict=True)):
        x, y = int(first[i]), int(second[i])
        for p in (x, y):
            while leave[p] and leave[p][0] <= a:
                heapq.heappop(leave[p])
        nx, ny = len(leave[x]), len(leave[y])
        pod = x if nx < ny or (nx == ny and coin[i]) else y
        b = max(a, free[pod][0])
        heapq.heapreplace(free[pod], b + s)
        heapq.heappush(leave[pod], b + s)
        wait[i] = b - a
    return wait


def simulate(
    policy: Policy,
    pods: int,
    slots: int,
    rate_rps: float,
    service: ServiceTime,
    n: int,
    arrivals: str = "poisson",
    seed: int = 1,
    warmup: float = 0.02,
) -> SimResult:
    """Simulate n requests; drop the first `warmup` fraction (the system starts empty)."""
    rng = np.random.default_rng(seed)
    arrive = arrival_times(rng, rate_rps, n, arrivals)
    serve = service_times(rng, service, n)
    if policy == "shared":
        wait = _fcfs_many(arrive, serve, pods * slots)
    elif policy == "p2c":
        wait = _p2c_waits(rng, arrive, serve, pods, slots)
    else:
        pod = rng.integers(0, pods, n) if policy == "random" else np.arange(n) % pods
        wait = np.empty(n)
        for k in range(pods):
            idx = np.flatnonzero(pod == k)
            wait[idx] = _fcfs_many(arrive[idx], serve[idx], slots)
    keep = slice(int(n * warmup), None)
    return SimResult(response_s=wait[keep] + serve[keep], wait_s=wait[keep])
