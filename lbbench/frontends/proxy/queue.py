"""The managed queue: one Service's backends, their `maxconn`, and one central FIFO in front of them.

A request goes straight to a backend when the queue is empty and a backend has room;
otherwise it waits in the FIFO (at most `max_queue` waiting: beyond, 503 at once) and is
answered 503 when it has waited `queue_timeout_s`. Every freed slot, new backend, or backend
that comes back takes the head of the queue. With no backend ready at all (the only pod is
being recreated) requests simply wait: the queue absorbs the restart window.

Failures: an attempt that fails to connect (or, for idempotent requests, is reset before any
response byte) is retried on another backend while the retry budget lasts (redispatch), or
waits at the head of the queue when no other backend has room. K consecutive failures eject a
backend (passive); active health checks (proxy_health) mark backends down and bring them back.
A backend marked down because its checks cannot reach it at all (a dead or cut-off node: its
packets go nowhere, so nothing will ever answer) also gives up its requests waiting for an
answer, as HAProxy's `on-marked-down shutdown-sessions`: they are retried elsewhere like a reset
(idempotent ones), instead of waiting for the server timeout while the client gives up.
Every change of a backend's health goes to `on_health` (the proxy reports it to its parent).
"""

from __future__ import annotations

import asyncio
import collections
import random
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from lbbench.frontends.proxy.backend import (
    BAD_STATUS,
    CONNECT_FAILED,
    RESET,
    RESET_AFTER,
    TIMEOUT,
    UNREACHABLE,
    Backend,
)
from lbbench.frontends.proxy.balance import make_balancer
from lbbench.frontends.proxy.exchange import CONNECTING, DONE, QUEUED
from lbbench.frontends.proxy.upstream import open_upstream
from lbbench.model.proxy import ProxySettings
from lbbench.model.service import Endpoint

if TYPE_CHECKING:
    from lbbench.frontends.proxy.exchange import Exchange
    from lbbench.frontends.proxy.health import HealthChecker, Verdict
    from lbbench.frontends.proxy.upstream import UpstreamConnection

EJECT_BASE_S = 1.0  # ejection time without active checks: base x consecutive ejections (max 10)

HealthListener = Callable[["Backend", str, str], None]  # (backend, "down" or "up", why)


class ServicePool:
    """A Service's backends behind one central FIFO queue (HAProxy's backend, Envoy's cluster)."""

    def __init__(self, key: str, settings: ProxySettings, rng: random.Random,
                 upstreams: set[UpstreamConnection], host: str = "") -> None:
        self.key = key
        self.host = (host or key.replace("/", ".")).encode()  # Host for requests that lack one
        self.settings = settings
        self.loop = asyncio.get_running_loop()
        self.balancer = make_balancer(settings.balance, rng)
        self.peak_ewma = settings.balance == "peak-ewma"  # the only balancer that reads response latencies
        self.backends: list[Backend] = []  # in Endpoints order, draining ones excluded
        self.by_addr: dict[tuple[str, int], Backend] = {}  # draining ones included
        self.queue: collections.deque[Exchange] = collections.deque()
        self.queued = 0  # live entries of `queue` (expired/cancelled ones are removed lazily)
        self.upstreams = upstreams
        self.tasks: set[asyncio.Task[None]] = set()
        self.health: HealthChecker | None = None
        self.on_health: HealthListener | None = None
        self.c: collections.Counter[str] = collections.Counter()  # rare events; the hot one is an int:
        self.requests = 0
        self.queue_wait_sum_s = 0.0
        self.queue_wait_max_s = 0.0

    # -- admission ----------------------------------------------------------------------------

    def admit(self, ex: Exchange) -> None:
        self.requests += 1
        if not self.queued:
            b = self.balancer.pick(self.backends, ())
            if b is not None:
                self._dispatch(ex, b)
                return
        if self.queued >= self.settings.max_queue:
            self.c["queue_full"] += 1
            ex.client.respond_error(ex, 503, f"the queue of {self.key} is full "
                                             f"({self.settings.max_queue} requests waiting)")
            return
        self._enqueue(ex, front=False)

    def _enqueue(self, ex: Exchange, *, front: bool) -> None:
        ex.state = QUEUED
        ex.queued_at = time.monotonic()
        ex.queue_timer = self.loop.call_later(self.settings.queue_timeout_s, self._expire, ex)
        if front:
            self.queue.appendleft(ex)
        else:
            self.queue.append(ex)
        self.queued += 1
        self.c["queued"] += 1

    def _unqueue(self, ex: Exchange, now: float) -> float:
        """Account for `ex` leaving the queue (its deque entry may stay until it reaches the head)."""
        self.queued -= 1
        if ex.queue_timer is not None:
            ex.queue_timer.cancel()
            ex.queue_timer = None
        wait = now - ex.queued_at
        ex.queue_wait_s += wait
        self.queue_wait_sum_s += wait
        if wait > self.queue_wait_max_s:
            self.queue_wait_max_s = wait
        if len(self.queue) > 2 * self.queued + 64:  # bound the dead entries
            self.queue = collections.deque(e for e in self.queue if e.state == QUEUED)
        return wait

    def _expire(self, ex: Exchange) -> None:
        if ex.state != QUEUED:
            return
        ex.state = DONE
        ex.queue_timer = None
        wait = self._unqueue(ex, time.monotonic())
        self.c["queue_timeouts"] += 1
        ex.client.respond_error(
            ex, 503, f"waited {wait:.3f} s in the queue of {self.key} (queue_timeout "
                     f"{self.settings.queue_timeout_s:g} s) and no backend had room")

    def cancel(self, ex: Exchange) -> None:
        """The client went away: leave the queue, or give the backend slot back."""
        if ex.state == QUEUED:
            ex.state = DONE
            self._unqueue(ex, time.monotonic())
            self.c["client_gone_queued"] += 1
        else:
            self.release(ex, ok=None)

    def drain(self) -> None:
        """Hand queued requests, oldest first, to backends with room."""
        q = self.queue
        now = 0.0
        while q:
            ex = q[0]
            if ex.state != QUEUED:
                q.popleft()
                continue
            b = self.balancer.pick(self.backends, ex.tried)
            if b is None:
                return
            q.popleft()
            now = now or time.monotonic()
            self._unqueue(ex, now)
            self._dispatch(ex, b)

    def _dispatch(self, ex: Exchange, b: Backend) -> None:
        ex.state = CONNECTING
        ex.backend = b
        b.in_flight += 1
        b.requests += 1
        ex.dispatched_at = time.monotonic()
        open_upstream(self, b, ex)

    # -- completion and failure ---------------------------------------------------------------

    def release(self, ex: Exchange, ok: bool | None, status: int = 0, now: float = 0.0) -> None:
        """The attempt on ex.backend is over: ok (a response, complete at `now` if known), None (the client left)."""
        self._free(ex, ok, status, now)
        if self.queue:
            self.drain()

    def _free(self, ex: Exchange, ok: bool | None, status: int, now: float = 0.0) -> Backend | None:
        b = ex.backend
        if b is None:
            return None
        ex.backend = None
        b.in_flight -= 1
        if ok:
            if self.peak_ewma:
                now = now or time.monotonic()
                b.observe_latency(now - ex.dispatched_at, now)
            b.responses += 1
            if status >= 500:
                self.note_failure(b, BAD_STATUS)
            else:
                b.consecutive_failures = 0
        if b.draining and b.in_flight == 0:
            self._retire(b)
        return b

    def failed(self, ex: Exchange, kind: str) -> bool:
        """An attempt failed before the response reached the client: retry (True) or give up (False)."""
        b = self._free(ex, False, 0)
        if b is None:
            return False
        self.note_failure(b, kind)
        s = self.settings
        if kind == CONNECT_FAILED:
            retry = ex.attempts <= s.retries
        elif kind in (RESET, UNREACHABLE):
            retry = s.retry_idempotent and ex.idempotent and ex.replayable and ex.attempts <= s.retries
        else:
            retry = False
        if retry:
            self.c["retries"] += 1
            ex.tried = (*ex.tried, b)
            ex.attempts += 1
            nxt = None if self.queued else self.balancer.pick(self.backends, ex.tried)
            if nxt is not None:
                self._dispatch(ex, nxt)
            else:
                self._enqueue(ex, front=True)  # it already waited its turn
        elif kind == CONNECT_FAILED:
            self.c["connect_gave_up"] += 1
        else:
            self.c["failed_in_flight"] += 1
        self.drain()
        return retry

    def note_failure(self, b: Backend, kind: str) -> None:
        b.failures += 1
        self.c[kind] += 1
        if kind == CONNECT_FAILED:
            b.connect_failures += 1
        elif kind in (RESET, RESET_AFTER):
            b.resets += 1
        elif kind == TIMEOUT:
            b.timeouts += 1
        b.consecutive_failures += 1
        k = self.settings.eject_after
        if k > 0 and b.consecutive_failures >= k and not b.ejected and not b.draining:
            self._eject(b)

    # -- backend state ------------------------------------------------------------------------

    def _eject(self, b: Backend) -> None:
        b.ejected = True
        b.ejections += 1
        self.c["ejections"] += 1
        b.health_streak = min(b.health_streak, 0)
        streak = min(b.ejections, 10)
        b.ejected_until = time.monotonic() + EJECT_BASE_S * streak
        b.refresh()
        b.close_idle()
        self.loop.call_later(EJECT_BASE_S * streak, self._maybe_return, b)

    def _maybe_return(self, b: Backend) -> None:
        """End of an ejection; with active checks, also wait for `rise` passed checks."""
        if not b.ejected or time.monotonic() < b.ejected_until - 1e-3:
            return
        if self.health is not None and b.health_streak < self.settings.health.rise:
            return  # the next passed check brings it back
        b.ejected = False
        b.consecutive_failures = max(0, self.settings.eject_after - 1)  # one more failure: out again
        b.refresh()
        self.drain()

    def health_result(self, b: Backend, verdict: Verdict) -> None:
        h = self.settings.health
        if verdict == "passed":
            b.health_ok += 1
            b.health_streak = max(b.health_streak, 0) + 1
            if b.down and b.health_streak >= h.rise:
                b.down = False
                b.refresh()
                self._tell(b, "up", f"{b.health_streak} check(s) passed")
                self.drain()
            if b.ejected:
                self._maybe_return(b)
            return
        b.health_fail += 1
        b.health_streak = min(b.health_streak, 0) - 1
        if not b.down and -b.health_streak >= h.fall:
            b.down = True
            self.c["marked_down"] += 1
            b.refresh()
            b.close_idle()
            why = f"{-b.health_streak} check(s) failed, the last {verdict}"
            if verdict == "unreachable":
                why += f"; {self._shut_down_sessions(b)} request(s) waiting for it given up"
            self._tell(b, "down", why)

    def _shut_down_sessions(self, b: Backend) -> int:
        """Give up the requests `b` will never answer: retried elsewhere where allowed, else a 502."""
        waiting = [conn for conn in b.conns if conn.ex is not None]
        for conn in waiting:
            ex = conn.ex
            got_bytes = conn.got_bytes
            conn.abort()
            if ex is not None:
                ex.client.upstream_failed(ex, RESET_AFTER if got_bytes else UNREACHABLE)
        return len(waiting)

    def _tell(self, b: Backend, state: str, why: str) -> None:
        if self.on_health is not None:
            self.on_health(b, state, why)

    def set_endpoints(self, endpoints: tuple[Endpoint, ...]) -> None:
        """Apply an Endpoints update: new pods start taking requests, removed ones drain."""
        wanted = {(e.ip, e.port) for e in endpoints}
        for addr, b in self.by_addr.items():
            if addr not in wanted and not b.draining:
                b.draining = True
                b.refresh()
                b.close_idle()
                if self.health is not None:
                    self.health.stop(b)
        fresh: list[Backend] = []
        for e in endpoints:
            known = self.by_addr.get((e.ip, e.port))
            if known is None:
                b = self.by_addr[(e.ip, e.port)] = Backend(e, self.settings.maxconn)
                if self.health is not None:
                    self.health.start(b)
            else:
                b = known
            if b.draining:
                b.draining = False
                b.refresh()
                if self.health is not None:
                    self.health.start(b)
            b.endpoint = e
            fresh.append(b)
        self.backends = fresh
        for b in [b for b in self.by_addr.values() if b.draining and b.in_flight == 0]:
            self._retire(b)
        self.c["endpoint_updates"] += 1
        self.drain()

    def _retire(self, b: Backend) -> None:
        if self.by_addr.get(b.addr) is b:
            del self.by_addr[b.addr]
        for conn in list(b.conns):
            conn.close()

    def close(self) -> None:
        for b in list(self.by_addr.values()):
            if self.health is not None:
                self.health.stop(b)
            for conn in list(b.conns):
                conn.close()
        for task in list(self.tasks):
            task.cancel()

    # -- measurement --------------------------------------------------------------------------

    @property
    def in_flight(self) -> int:
        return sum(b.in_flight for b in self.by_addr.values())

    def counters(self) -> dict[str, int]:
        out = dict(self.c)
        if self.requests:
            out["requests"] = self.requests
        return out

    def snapshot(self) -> dict[str, object]:
        return {
            "queue_len": self.queued, "in_flight": self.in_flight, "max_queue": self.settings.max_queue,
            "maxconn": self.settings.maxconn, "balance": self.settings.balance,
            "queue_wait_sum_s": self.queue_wait_sum_s, "queue_wait_max_s": self.queue_wait_max_s,
            "counters": self.counters(),
            "backends": [b.snapshot() for b in self.by_addr.values()],
        }
