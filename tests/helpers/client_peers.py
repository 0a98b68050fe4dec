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
