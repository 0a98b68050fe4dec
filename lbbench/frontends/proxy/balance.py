"""Balancers: which eligible backend gets the next request.

Eligible means usable (not down, ejected or draining) and below its `maxconn`. A retried
request passes the backends it already tried as `exclude`; they are avoided while another
eligible backend exists (redispatch) and used again otherwise.
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from typing import Protocol

from lbbench.frontends.proxy.backend import Backend
from lbbench.model.proxy import BALANCES


class Balancer(Protocol):
    def pick(self, backends: Sequence[Backend], exclude: Sequence[Backend]) -> Backend | None: ...


def eligible(backends: Sequence[Backend], exclude: Sequence[Backend]) -> list[Backend]:
    found = [b for b in backends if b.usable and (b.maxconn == 0 or b.in_flight < b.maxconn)]
    if exclude and len(found) > 1:
        untried = [b for b in found if b not in exclude]
        if untried:
            return untried
    return found


class RoundRobin:
    """The next eligible backend after the last one chosen, in Endpoints order."""

    def __init__(self, rng: random.Random) -> None:
        self._next = 0

    def pick(self, backends: Sequence[Backend], exclude: Sequence[Backend]) -> Backend | None:
        n = len(backends)
        if not n:
            return None
        i = self._next % n
        b = backends[i]
        if b.usable and (b.maxconn == 0 or b.in_flight < b.maxconn) and not exclude:
            self._next = i + 1  # the common case: the next in turn has room (the loop below, first round)
            return b
        fallback: Backend | None = None
        left = n  # a while loop: a range object per request costs more than the loop itself
        while left:
            left -= 1
            b = backends[i]
            i += 1
            if b.usable and (b.maxconn == 0 or b.in_flight < b.maxconn):
                if exclude and b in exclude:
                    fallback = fallback or b
                else:
                    self._next = i
                    return b
            if i == n:
                i = 0
        return fallback


class RandomChoice:
    """Uniform among eligible backends: what kube-proxy's DNAT does, but never onto a full pod."""

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng

    def pick(self, backends: Sequence[Backend], exclude: Sequence[Backend]) -> Backend | None:
        found = eligible(backends, exclude)
        return self._rng.choice(found) if found else None


class LeastConn:
    """Fewest requests in flight; ties broken by a rotating start so that none is favoured."""

    def __init__(self, rng: random.Random) -> None:
        self._start = 0

    def pick(self, backends: Sequence[Backend], exclude: Sequence[Backend]) -> Backend | None:
        found = eligible(backends, exclude)
        if not found:
            return None
        n = len(found)
        self._start = (self._start + 1) % n
        best = found[self._start]
        for k in range(1, n):
            b = found[(self._start + k) % n]
            if b.in_flight < best.in_flight:
                best = b
        return best


class PowerOfTwo:
    """Two eligible backends at random, the one with fewer requests in flight (Mitzenmacher)."""

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng

    def _two(self, found: list[Backend]) -> tuple[Backend, Backend]:
        n = len(found)
        rnd = self._rng.random
        i = int(rnd() * n)
        j = int(rnd() * (n - 1))
        return found[i], found[j + 1 if j >= i else j]

    def pick(self, backends: Sequence[Backend], exclude: Sequence[Backend]) -> Backend | None:
        found = eligible(backends, exclude)
        if len(found) <= 1:
            return found[0] if found else None
        a, b = self._two(found)
        return b if b.in_flight < a.in_flight else a


class PeakEwma(PowerOfTwo):
    """Power of two choices on latency x load (Finagle / Linkerd): cost = peak-EWMA rtt * (in flight + 1)."""

    def pick(self, backends: Sequence[Backend], exclude: Sequence[Backend]) -> Backend | None:
        found = eligible(backends, exclude)
        if len(found) <= 1:
            return found[0] if found else None
        a, b = self._two(found)
        now = time.monotonic()
        return b if b.load_cost(now) < a.load_cost(now) else a


def make_balancer(name: str, rng: random.Random) -> Balancer:
    classes: dict[str, type[RoundRobin | RandomChoice | LeastConn | PowerOfTwo | PeakEwma]] = {
        "round-robin": RoundRobin, "random": RandomChoice, "least-conn": LeastConn,
        "p2c": PowerOfTwo, "peak-ewma": PeakEwma,
    }
    if name not in classes:
        raise ValueError(f"unknown balance {name!r}; expected one of {', '.join(BALANCES)}")
    return classes[name](rng)
