"""The proxy process: listeners, Services' pools, routing, timeouts, control messages, shutdown.

Timeouts are not timers per connection: each connection keeps a `deadline` attribute (set
by plain assignment on the hot path) and one sweeper walks all connections a few times per
second. Only queue timeouts, which must be exact, use a loop timer per waiting request.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import random
import signal
import socket
import time
from typing import Any

from lbbench.frontends.proxy.backend import Backend
from lbbench.frontends.proxy.client import LINGER_S, ClientConnection
from lbbench.frontends.proxy.config import ProxyConfig
from lbbench.frontends.proxy.discovery import DnsDiscovery
from lbbench.frontends.proxy.health import HealthChecker
from lbbench.frontends.proxy.queue import ServicePool
from lbbench.frontends.proxy.route import Router
from lbbench.frontends.proxy.stats import StatsProtocol, document
from lbbench.frontends.proxy.upstream import UpstreamConnection
from lbbench.model.service import read_endpoints_update
from lbbench.system.control import Message, Notices, attach_requests
from lbbench.system.sharedaccept import Loads, SharedAcceptor

_CLASSES = ("responses_other", "responses_1xx", "responses_2xx", "responses_3xx", "responses_4xx",
            "responses_5xx")


class CountedClients(set[ClientConnection]):
    """The open client connections, their number published to the sibling workers (sharedaccept)."""

    def __init__(self, loads: Loads) -> None:
        super().__init__()
        self.loads = loads

    def add(self, c: ClientConnection) -> None:
        if c not in self:
            super().add(c)
            self.loads.mine += 1

    def discard(self, c: object) -> None:
        if c in self:
            super().discard(c)
            self.loads.mine -= 1


class ProxyApp:
    """One proxy process. With `shared` (a listening socket and the workers' loads) it is one of
    `lbbench serve proxy --workers N`'s workers, accepting while it is the least loaded."""

    def __init__(self, config: ProxyConfig, shared: tuple[socket.socket, Loads] | None = None) -> None:
        self.config = config
        self.shared = shared
        self._acceptor: SharedAcceptor | None = None
        self.c: collections.Counter[str] = collections.Counter()  # rare events; the hot ones are plain ints:
        self.client_requests = 0
        self.responses = [0] * 10  # by status // 100 (statuses have 3 digits); 0 and 6-9 are "other"
        self.clients: set[ClientConnection] = set()
        self.upstreams: set[UpstreamConnection] = set()
        self.pools: dict[str, ServicePool] = {}
        self.router: Router[ServicePool] = Router([])
        self.started_s = time.monotonic()
        self.listen = ""
        self.stats = ""
        self._servers: list[asyncio.Server] = []
        self._sweeper: asyncio.TimerHandle | None = None
        self.discovery: DnsDiscovery | None = None
        self.notices = Notices()
        s = config.settings
        self._tick_s = min(max(min(s.client_timeout_s, s.server_timeout_s, LINGER_S) / 10, 0.01), 0.25)

    def count_response(self, status: int) -> None:
        self.responses[status // 100 if 100 <= status < 1000 else 0] += 1

    def counters(self) -> dict[str, int]:
        """The client-side counters, as the stats document shows them (events that happened)."""
        out = dict(self.c)
        if self.discovery is not None:
            out.update(self.discovery.counters())
        if self.client_requests:
            out["client_requests"] = self.client_requests
        other = self.responses[0] + sum(self.responses[6:])
        for name, n in zip(_CLASSES, [other, *self.responses[1:6]], strict=True):
            if n:
                out[name] = n
        return out

    async def start(self) -> None:
        cfg = self.config
        rng = random.Random(cfg.seed)
        for svc in cfg.services:
            pool = ServicePool(svc.key, cfg.settings, rng, self.upstreams, svc.dns_name)
            if cfg.settings.health.interval_s > 0:
                pool.health = HealthChecker(pool, cfg.settings.health, rng)
                pool.on_health = functools.partial(self.report_health, svc.key)
            self.pools[svc.key] = pool
        for key, eps in cfg.endpoints:
            self.pools[key].set_endpoints(eps)
        await self._start_discovery()
        if cfg.rules:
            self.router = Router([(r.host, r.path, self.pools[r.service]) for r in cfg.rules])
        else:
            default = self.pools[cfg.default_service] if cfg.default_service else None
            self.router = Router([(s.dns_name, "/", self.pools[s.key]) for s in cfg.services], default)
        loop = asyncio.get_running_loop()
        if self.shared is not None:
            sock, loads = self.shared
            self.clients = CountedClients(loads)
            self._acceptor = SharedAcceptor(sock, loads, lambda: ClientConnection(self))
            host, port = sock.getsockname()[:2]
            self.listen = f"{host}:{port}"
        else:
            server = await loop.create_server(lambda: ClientConnection(self), cfg.listen.host, cfg.listen.port,
                                              backlog=4096, reuse_address=True)
            self._servers.append(server)
            self.listen = _bound(server)
        if cfg.stats is not None:
            stats = await loop.create_server(lambda: StatsProtocol(self.snapshot), cfg.stats.host, cfg.stats.port,
                                             reuse_address=True)
            self._servers.append(stats)
            self.stats = _bound(stats)
        self._sweeper = loop.call_later(self._tick_s, self._sweep)

    def _sweep(self) -> None:
        now = time.monotonic()
        for c in [c for c in self.clients if (c.deadline and now >= c.deadline)
                  or (c.write_deadline and now >= c.write_deadline)]:
            c.on_deadline(now)
        for u in [u for u in self.upstreams if u.deadline and now >= u.deadline]:
            u.on_deadline()
        self._sweeper = asyncio.get_running_loop().call_later(self._tick_s, self._sweep)

    async def _start_discovery(self) -> None:
        """--backend-dns: the first answer before listening (no 503s for want of pods), then every period."""
        cfg = self.config
        if cfg.discovery is None or cfg.default_service is None:
            return
        self.discovery = DnsDiscovery(cfg.discovery, self.pools[cfg.default_service].set_endpoints)
        await self.discovery.resolve_once()
        self.discovery.start()

    def report_health(self, service: str, b: Backend, state: str, why: str) -> None:
        """Tell the parent (one JSON line on stdout) that the checks marked a backend down or up, and when.

        The time is this process's monotonic clock, which is the machine's: the run puts it on its own
        clock (events.csv's `backend_down` / `backend_up`), as the moment the proxy itself knew.
        """
        self.notices.send({"event": f"backend_{state}", "at_monotonic_s": time.monotonic(), "service": service,
                           "backend": b.name, "addr": f"{b.addr[0]}:{b.addr[1]}", "why": why})

    async def on_control(self, msg: Message) -> Message:
        """Apply one control request; the reply (or the ValueError's reason) goes back to the front end."""
        if "endpoints" not in msg:
            return {}
        key, endpoints = read_endpoints_update(msg["endpoints"])
        pool = self.pools.get(key)
        if pool is None:
            raise ValueError(f"endpoints for unknown Service {key!r}")
        pool.set_endpoints(endpoints)
        return {"ok": True}

    def snapshot(self) -> dict[str, Any]:
        services = {k: p.snapshot() for k, p in self.pools.items()}
        return document(self.counters(), services, listen=self.listen, started_s=self.started_s,
                        client_connections=len(self.clients))

    async def stop(self, grace_s: float = 5.0) -> None:
        """Stop accepting, let requests in progress finish (up to `grace_s`), then close everything."""
        for server in self._servers:
            server.close()
        if self._acceptor is not None:
            self._acceptor.close()
        if self.discovery is not None:
            await self.discovery.stop()
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline:
            busy = False
            for c in list(self.clients):
                if c.current is None and c.reader.parsing is None and c.transport is not None:
                    c.transport.close()
                else:
                    busy = True
            if not busy:
                break
            await asyncio.sleep(0.02)
        if self._sweeper is not None:
            self._sweeper.cancel()
        for c in list(self.clients):
            if c.transport is not None:
                c.transport.abort()
        for pool in self.pools.values():
            pool.close()
        for server in self._servers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 1.0)


def _bound(server: asyncio.Server) -> str:
    host, port = server.sockets[0].getsockname()[:2]
    return f"{host}:{port}"


async def serve(config: ProxyConfig, *, control: bool = True,
                shared: tuple[socket.socket, Loads] | None = None) -> None:
    """Run the proxy until SIGTERM/SIGINT; announce readiness as one JSON line on stdout, then its
    checks' verdicts (`backend_down` / `backend_up` lines) as they come."""
    loop = asyncio.get_running_loop()
    app = ProxyApp(config, shared)
    await app.start()
    if control:
        attach_requests(loop, app.on_control)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    app.notices.announce({"event": "ready", "listen": app.listen, "stats": app.stats or None})
    await stop.wait()
    await app.stop()
