"""Helpers for the proxy's tests and measurements: start it, talk raw HTTP to it, load it.

`keepalive_load` is a small closed-loop keep-alive client on asyncio.Protocol + llhttp, used
by the tests and for the proxy-versus-direct measurement; lbbench's real load generator (open
loop, scheduled send times) lives in lbbench.load.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import select
import socket
import subprocess
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from httptools import HttpParserError, HttpResponseParser

from lbbench.cluster.standalone import fresh_ip
from lbbench.model.addresses import HostPort, parse_hostport
from lbbench.system.procs import Child, Supervisor, lbbench_argv


@dataclass(frozen=True)
class ProxyProcess:
    child: Child
    addr: HostPort
    stats: HostPort


def start_proxy(sup: Supervisor, backends: Sequence[HostPort], *args: str, listen: str | None = None,
                timeout_s: float = 15.0) -> ProxyProcess:
    """`lbbench serve proxy` on a fresh loopback IP, stats on the same IP; waits for its ready line."""
    ip = fresh_ip()
    argv = lbbench_argv("serve", "proxy", "--listen", listen or f"{ip}:8080", "--stats", f"{ip}:0",
                        *(a for b in backends for a in ("--backend", str(b))), *args)
    child = sup.spawn("proxy", argv, stdout=subprocess.PIPE)
    assert child.popen.stdout is not None
    ready, _, _ = select.select([child.popen.stdout], [], [], timeout_s)
    line = child.popen.stdout.readline() if ready else b""
    child.popen.stdout.close()
    if not line:
        raise RuntimeError(f"proxy did not start (exit code {child.poll()})")
    doc = json.loads(line)
    return ProxyProcess(child, parse_hostport(doc["listen"]), parse_hostport(doc["stats"]))


def get_stats(stats: HostPort) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://{stats}/stats", timeout=5) as r:
        doc: dict[str, Any] = json.loads(r.read())
    return doc


@dataclass
class Reply:
    status: int  # 0: no response (the error says why)
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    latency_s: float = 0.0
    error: str = ""


class _ResponseCollector:
    def __init__(self) -> None:
        self.replies: list[Reply] = []
        self._headers: dict[str, str] = {}
        self._body = bytearray()
        self.parser = HttpResponseParser(self)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_body(self, data: bytes) -> None:
        self._body += data

    def on_message_complete(self) -> None:
        self.replies.append(Reply(self.parser.get_status_code(), self._headers, bytes(self._body)))
        self._headers = {}
        self._body = bytearray()


def parse_responses(data: bytes) -> list[Reply]:
    """Every complete response in `data` (an HTTP/1.1 byte stream from the server)."""
    c = _ResponseCollector()
    with contextlib.suppress(HttpParserError):
        c.parser.feed_data(data)
    return c.replies


def raw_exchange(addr: HostPort, data: bytes, *, timeout_s: float = 5.0, shut_write: bool = False) -> bytes:
    """Send raw bytes, return everything received until the server closes (or `timeout_s`)."""
    out = bytearray()
    with socket.create_connection((addr.host, addr.port), timeout=timeout_s) as s:
        s.sendall(data)
        if shut_write:
            s.shutdown(socket.SHUT_WR)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            s.settimeout(max(deadline - time.monotonic(), 0.001))
            try:
                chunk = s.recv(65536)
            except TimeoutError:
                break
            except ConnectionResetError:
                break
            if not chunk:
                break
            out += chunk
    return bytes(out)


def request_bytes(path: str = "/", *, method: str = "GET", host: str = "svc", body: bytes = b"",
                  headers: Sequence[tuple[str, str]] = ()) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}", *(f"{k}: {v}" for k, v in headers)]
    if body or method in ("POST", "PUT"):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


class _KeepAliveClient(asyncio.Protocol):
    """One connection, one request at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.waiter: asyncio.Future[Reply] | None = None
        self.collector = _ResponseCollector()
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.collector.parser.feed_data(data)
        except HttpParserError as e:
            self._resolve(Reply(0, error=f"bad response: {e}"))
            if self.transport is not None:
                self.transport.abort()
            return
        if self.collector.replies:
            self._resolve(self.collector.replies.pop(0))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._resolve(Reply(0, error=f"connection lost: {exc or 'closed'}"))

    def _resolve(self, reply: Reply) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(reply)

    async def send(self, raw: bytes) -> Reply:
        assert self.transport is not None
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(raw)
        return await self.waiter


async def keepalive_load(addr: HostPort, raw: bytes, *, connections: int, duration_s: float | None = None,
                         requests: int | None = None, stop: asyncio.Event | None = None,
                         timeout_s: float = 30.0) -> list[Reply]:
    """Closed-loop load: `connections` keep-alive clients each sending `raw` back to back.

    Runs for `duration_s`, until `requests` replies in total, or until `stop` is set.
    Connection failures are recorded as replies with status 0 and the client reconnects.
    """
    loop = asyncio.get_running_loop()
    replies: list[Reply] = []
    stop_at = time.monotonic() + duration_s if duration_s is not None else float("inf")
    budget = [requests if requests is not None else 1 << 62]

    async def worker() -> None:
        proto: _KeepAliveClient | None = None
        while time.monotonic() < stop_at and budget[0] > 0 and not (stop is not None and stop.is_set()):
            budget[0] -= 1
            t0 = time.perf_counter()
            try:
                if proto is None or proto.closed:
                    _, proto = await loop.create_connection(_KeepAliveClient, addr.host, addr.port)
                reply = await asyncio.wait_for(proto.send(raw), timeout_s)
            except (OSError, TimeoutError) as e:
                reply = Reply(0, error=f"{type(e).__name__}: {e}")
                if proto is not None and proto.transport is not None:
                    proto.transport.abort()
                proto = None
            reply.latency_s = time.perf_counter() - t0
            replies.append(reply)
            if reply.status == 0 or reply.headers.get("connection", "").lower() == "close":
                if proto is not None and proto.transport is not None:
                    proto.transport.close()
                proto = None
        if proto is not None and proto.transport is not None:
            proto.transport.close()

    await asyncio.gather(*(worker() for _ in range(connections)))
    await asyncio.sleep(0)  # let the transports finish closing
    return replies
