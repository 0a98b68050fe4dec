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
import socketserver
import subprocess
import threading
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from httptools import HttpParserError, HttpRequestParser, HttpResponseParser

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


def parse_responses(data: bytes, *, after_close: bool = False) -> list[Reply]:
    """Every complete response in `data` (an HTTP/1.1 byte stream from the server).

    after_close: also the responses after one that said `Connection: close` (a proxy answers a
    pipelined request it refuses after the response in progress, which may have said so).
    """
    c = _ResponseCollector()
    if after_close:
        c.parser.set_dangerous_leniencies(lenient_keep_alive=True)
    with contextlib.suppress(HttpParserError):
        c.parser.feed_data(data)
    return c.replies


def raw_exchange(addr: HostPort, data: bytes, *, timeout_s: float = 5.0, shut_write: bool = False) -> bytes:
    """Send raw bytes, return everything received until the server closes (or `timeout_s`)."""
    return raw_conversation(addr, data, timeout_s=timeout_s, shut_write=shut_write)[0]


def raw_conversation(addr: HostPort, data: bytes, *, timeout_s: float = 5.0,
                     shut_write: bool = False) -> tuple[bytes, bool]:
    """Send raw bytes: (everything received, whether the server closed or reset before `timeout_s`)."""
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
                return bytes(out), True
            if not chunk:
                return bytes(out), True
            out += chunk
    return bytes(out), False


@dataclass(frozen=True)
class Received:
    """One request as a backend parsed it."""

    method: str
    target: bytes
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes

    def header(self, name: bytes) -> list[bytes]:
        return [v for k, v in self.headers if k.lower() == name.lower()]


class _RecordingHandler(socketserver.BaseRequestHandler):
    server: _RecordingServer

    def handle(self) -> None:
        sock: socket.socket = self.request
        collector = _RequestCollector(self.server, sock)
        while True:
            try:
                data = sock.recv(65536)
            except OSError:
                return
            if not data:
                return
            self.server.record_bytes(data)
            try:
                collector.parser.feed_data(data)
            except HttpParserError as e:
                self.server.record_error(str(e))
                return
            except OSError:
                return


class _RequestCollector:
    """llhttp callbacks of one backend connection: each complete request is recorded and answered."""

    def __init__(self, server: _RecordingServer, sock: socket.socket) -> None:
        self.server = server
        self.sock = sock
        self.parser = HttpRequestParser(self)
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.body = bytearray()

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_body(self, data: bytes) -> None:
        self.body += data

    def on_message_complete(self) -> None:
        method = self.parser.get_method().decode("latin-1")
        self.server.record(Received(method, self.url, tuple(self.headers), bytes(self.body)))
        self.url, self.headers, self.body = b"", [], bytearray()
        self.sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\nX-Pod: recorder\r\n\r\nrecorded\n")


class _RecordingServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, addr: tuple[str, int]) -> None:
        super().__init__(addr, _RecordingHandler)
        self.lock = threading.Lock()
        self.requests: list[Received] = []
        self.errors: list[str] = []
        self.bytes_in = 0

    def record(self, r: Received) -> None:
        with self.lock:
            self.requests.append(r)

    def record_bytes(self, data: bytes) -> None:
        with self.lock:
            self.bytes_in += len(data)

    def record_error(self, message: str) -> None:
        with self.lock:
            self.errors.append(message)


class RecordingBackend:
    """A backend that parses with llhttp, answers every request 200 and records what it received.

    Its own parser is the witness of request smuggling: a request the proxy forwarded inside
    another one's body, or after a framing disagreement, shows up here as an extra request.
    """

    def __init__(self) -> None:
        self._server = _RecordingServer((fresh_ip(), 0))
        host, port = self._server.server_address[:2]
        self.addr = HostPort(str(host), int(port))
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def mark(self) -> tuple[int, int, int]:
        """Where the records stand now: pass it to `since` later."""
        with self._server.lock:
            return len(self._server.requests), len(self._server.errors), self._server.bytes_in

    def since(self, mark: tuple[int, int, int]) -> tuple[list[Received], list[str], int]:
        """Requests, parse errors and byte count received after `mark`."""
        with self._server.lock:
            return (self._server.requests[mark[0]:], self._server.errors[mark[1]:],
                    self._server.bytes_in - mark[2])

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    def __enter__(self) -> RecordingBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


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
