"""The load client's test peers: one-shot fetches and scripted loopback HTTP servers (no mocks)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import uvloop

from lbbench.cluster.standalone import fresh_ip
from lbbench.load.client import HttpClient, Request, build_request
from lbbench.model.addresses import HostPort
from lbbench.model.load import ConnectionMode

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    return uvloop.run(coro)


async def fetch(target: HostPort, path: str = "/", mode: str = "close", n: int = 1, *, sequential: bool = True,
                pause_s: float = 0.0, **kw: Any) -> list[Request]:
    """Issue `n` requests (one after another, or all at once) and return them in completion order."""
    done: list[Request] = []
    m = ConnectionMode.parse(mode)
    client = HttpClient(target, build_request(path, str(target), close=m.kind == "close"), m, done.append,
                        pool_size=m.pool, **kw)
    for _ in range(n):
        client.issue(time.monotonic())
        if sequential:
            await client.wait_idle()
            await asyncio.sleep(pause_s)
    await client.wait_idle()
    client.close()
    await asyncio.sleep(0.02)  # let closed transports finish
    return done


# -- scripted servers -------------------------------------------------------------------------
Handler = Callable[[int, int, asyncio.Transport], None]  # (connection no, request no on it, transport)
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nx-pod: scripted\r\n\r\nok\n"


def two_then_close_and_drop_fifth() -> Handler:
    """Closes every connection after its second answer, and the 5th request's without answering it."""
    seen: list[int] = []

    def h(conn: int, n: int, tr: asyncio.Transport) -> None:
        seen.append(conn)
        if len(seen) == 5:
            tr.close()
            return
        tr.write(OK)
        if n == 1:
            tr.close()
    return h


class _Scripted(asyncio.Protocol):
    def __init__(self, handler: Handler, conn_no: int) -> None:
        self.handler = handler
        self.conn_no = conn_no
        self.buf = b""
        self.n = 0
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while b"\r\n\r\n" in self.buf and self.transport is not None:
            _, self.buf = self.buf.split(b"\r\n\r\n", 1)
            self.handler(self.conn_no, self.n, self.transport)
            self.n += 1


@contextlib.asynccontextmanager
async def scripted(handler: Handler) -> Any:
    loop = asyncio.get_running_loop()
    counter = iter(range(10**6))
    server = await loop.create_server(lambda: _Scripted(handler, next(counter)), fresh_ip(), 0)
    host, port = server.sockets[0].getsockname()[:2]
    try:
        yield HostPort(host, port)
    finally:
        server.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server.wait_closed(), 1.0)


# -- one schedule through either client (pool 0: close mode, a new connection per request) -------------
Outcome = tuple[int, str, str, int, bool]  # status, error, pod, conn_id, new_conn


def outcomes(reqs: list[Request]) -> list[Outcome]:
    return [(r.status, r.error, r.pod, r.conn_id, r.new_conn) for r in sorted(reqs, key=lambda r: r.intended)]


async def python_schedule(target: HostPort, offsets: list[float], pool: int, **kw: Any) -> list[Request]:
    """HttpClient (keepalive:pool, or close mode for pool 0) issuing one request at each offset from now;
    every request, once ended."""
    done: list[Request] = []
    m = ConnectionMode("keepalive", pool) if pool else ConnectionMode("close")
    client = HttpClient(target, build_request("/", str(target), close=not pool), m, done.append, pool_size=pool, **kw)
    t0 = time.monotonic() + 0.02
    for off in offsets:
        delay = t0 + off - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        client.issue(max(t0 + off, time.monotonic()) if off >= 0 else t0 + off)
    await asyncio.wait_for(client.wait_idle(), 30)
    client.close()
    await asyncio.sleep(0.02)
    return done


async def engine_schedule(target: HostPort, offsets: list[float], pool: int, *, connect_timeout_s: float = 1.0,
                          timeout_s: float = 10.0, stop_after_s: float | None = None,
                          abort_after_s: float | None = None) -> tuple[list[Request], int, int]:
    """The native engine on the same schedule: (ended requests as Request records, dropped by abort, issued)."""
    import numpy as np

    from lbbench.load import _engine
    from lbbench.load.native import RECORD
    from lbbench.load.recorder import ERROR_TABLE

    eng = _engine.Engine(target.host, target.port, build_request("/", str(target), close=not pool), pool,
                         connect_timeout_s, timeout_s, 0, 1)
    t0 = time.monotonic() + 0.02
    eng.start_open(np.array(offsets, dtype=np.float64) + t0)
    chunks: list[bytes] = []
    dropped = 0
    deadline = time.monotonic() + 30
    issued = 0
    try:
        while time.monotonic() < deadline:
            await asyncio.sleep(0.005)  # the scripted server runs on this loop meanwhile
            if stop_after_s is not None and time.monotonic() >= t0 + stop_after_s:
                eng.stop_sending()
            if abort_after_s is not None and time.monotonic() >= t0 + abort_after_s:
                dropped = eng.abort()
            data, issued, outstanding, sending_done, _, _ = eng.drain()
            chunks.append(data)
            if eng.closed or not eng.running or (sending_done and outstanding == 0):
                break
        pods = eng.strings(0, 0)
    finally:
        eng.close()
    recs = np.frombuffer(b"".join(chunks), dtype=RECORD)
    out = []
    for rec in recs:
        r = Request(float(rec["intended"]), float(rec["issued"]), -1)
        r.sent, r.done, r.freed = float(rec["sent"]), float(rec["done"]), float(rec["freed"])
        r.status, r.conn_id, r.new_conn = int(rec["status"]), int(rec["conn_id"]), bool(rec["new_conn"])
        r.error = "aborted" if rec["error"] < 0 else ERROR_TABLE[int(rec["error"])]
        r.pod = pods[int(rec["pod"])]
        r.queue_ms, r.service_ms = float(rec["queue_ms"]), float(rec["service_ms"])
        out.append(r)
    return out, dropped, issued
