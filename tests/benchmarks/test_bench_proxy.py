"""Micro-benchmarks of the proxy's per-request CPU: parse, route, queue admission, response relay.

The proxy's objects are driven in-process with stand-in transports that count bytes, so the
numbers are the proxy's own Python cost per request, without sockets or the event loop.
Run with `pytest tests/benchmarks/test_bench_proxy.py --benchmark-enable`.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from typing import Any

import uvloop

from lbbench.frontends.proxy.app import ProxyApp
from lbbench.frontends.proxy.client import ClientConnection
from lbbench.frontends.proxy.config import ProxyConfig
from lbbench.frontends.proxy.queue import ServicePool
from lbbench.frontends.proxy.route import Router
from lbbench.frontends.proxy.upstream import UpstreamConnection
from lbbench.model.addresses import HostPort
from lbbench.model.proxy import HealthCheck, ProxySettings
from lbbench.model.service import Endpoint, ServiceSpec

REQUEST = (b"GET /api/items?id=42 HTTP/1.1\r\nHost: web.shop.svc.cluster.local\r\nUser-Agent: bench\r\n"
           b"Accept: */*\r\nAccept-Encoding: gzip\r\nX-Request-Id: 0123456789abcdef\r\n\r\n")
RESPONSE = (b"HTTP/1.1 200 OK\r\nx-pod: web-1\r\nx-pod-ip: 127.0.0.9\r\nx-queue-ms: 0.010\r\n"
            b"x-service-ms: 1.000\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n"
            b"Date: Thu, 01 Jan 2026 00:00:00 GMT\r\nServer: Python/3.11 aiohttp\r\n\r\nok\n")
# What `lbbench bench --backend nginx` sends through the proxy: wrk's request, nginx's `return 200`.
WRK_REQUEST = b"GET / HTTP/1.1\r\nHost: web.bench.svc.cluster.local\r\n\r\n"
NGINX_RESPONSE = (b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Thu, 01 Jan 2026 00:00:00 GMT\r\n"
                  b"Content-Type: application/octet-stream\r\nContent-Length: 3\r\nConnection: keep-alive\r\n"
                  b"\r\nok\n")


class CountingTransport:
    """Stands in for a socket transport: counts what is written."""

    def __init__(self) -> None:
        self.written = 0
        self.closing = False

    def write(self, data: bytes) -> None:
        self.written += len(data)

    def writelines(self, parts: Iterable[bytes]) -> None:
        for p in parts:
            self.written += len(p)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40000) if name == "peername" else default

    def is_closing(self) -> bool:
        return self.closing

    def pause_reading(self) -> None: ...
    def resume_reading(self) -> None: ...
    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None: ...

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.closing = True


def _proxy(n_backends: int, settings: ProxySettings | None = None) -> tuple[ProxyApp, ServicePool]:
    svc = ServiceSpec("web", "shop", "ClusterIP", "127.97.0.1", 80, 8080)
    settings = settings or ProxySettings(maxconn=1, balance="p2c", health=HealthCheck(interval_s=0))
    config = ProxyConfig(HostPort("127.0.0.1", 0), None, (svc,), (), (), settings, default_service=svc.key)
    app = ProxyApp(config)
    pool = ServicePool(svc.key, settings, random.Random(0), app.upstreams, svc.dns_name)
    pool.set_endpoints(tuple(Endpoint(f"web-{i}", f"127.0.0.{10 + i}", 8080) for i in range(n_backends)))
    app.pools[svc.key] = pool
    app.router = Router([(svc.dns_name, "/", pool)], pool)
    for b in pool.backends:  # one idle keep-alive connection per backend
        up = UpstreamConnection(b, pool)
        up.connection_made(CountingTransport())  # type: ignore[arg-type]
        up.release(True)
    return app, pool


def _client(app: ProxyApp) -> tuple[ClientConnection, CountingTransport]:
    t = CountingTransport()
    c = ClientConnection(app)
    c.connection_made(t)  # type: ignore[arg-type]
    return c, t


def _in_loop(fn: Callable[[], None]) -> None:
    async def main() -> None:
        fn()

    uvloop.run(main())


def test_bench_request_through_the_proxy(benchmark: Any) -> None:
    """Parse, route, admit (a backend has room), write upstream, parse the response, relay it."""

    def run() -> None:
        app, pool = _proxy(4)
        client, t = _client(app)

        def cycle() -> None:
            client.data_received(REQUEST)
            ex = client.current
            assert ex is not None and ex.upstream is not None
            ex.upstream.data_received(RESPONSE)

        benchmark(cycle)
        assert app.counters()["responses_2xx"] >= 1 and pool.in_flight == 0 and pool.queued == 0
        assert t.written > len(RESPONSE)

    _in_loop(run)


def test_bench_wrk_request_nginx_response(benchmark: Any) -> None:
    """The exchange `lbbench bench --backend nginx` measures: one backend, no maxconn, round-robin."""

    def run() -> None:
        app, pool = _proxy(1, ProxySettings(maxconn=0, health=HealthCheck(interval_s=0)))
        client, t = _client(app)

        def cycle() -> None:
            client.data_received(WRK_REQUEST)
            ex = client.current
            assert ex is not None and ex.upstream is not None
            ex.upstream.data_received(NGINX_RESPONSE)

        benchmark(cycle)
        assert app.counters()["responses_2xx"] >= 1 and pool.in_flight == 0
        assert t.written > len(NGINX_RESPONSE)

    _in_loop(run)


def test_bench_request_through_the_queue(benchmark: Any) -> None:
    """One backend with maxconn 1 and two clients: every other request waits in the queue."""

    def run() -> None:
        app, pool = _proxy(1)
        (a, _), (b, _) = _client(app), _client(app)

        def cycle() -> None:
            a.data_received(REQUEST)
            b.data_received(REQUEST)  # queued behind a's
            assert pool.queued == 1
            up = a.current.upstream if a.current else None
            assert up is not None
            up.data_received(RESPONSE)  # a done; b dispatched on the same connection
            assert b.current is not None and b.current.upstream is up
            up.data_received(RESPONSE)

        benchmark(cycle)
        assert pool.counters()["queued"] >= 1 and pool.queued == 0 and app.counters()["responses_2xx"] >= 2

    _in_loop(run)


def test_bench_router_lookup(benchmark: Any) -> None:
    r = Router([("*", "/", 0), ("shop.example", "/", 1), ("shop.example", "/api", 2), ("*.example", "/", 3)])
    assert benchmark(r.route, b"shop.example:8080", b"/api/items?id=1") == 2

