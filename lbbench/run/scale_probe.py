"""First-packet latency: new TCP connections to the Services under test, open loop, one at a time.

Each connection is due at an intended time (constant arrivals at `rate_rps`, round robin over
the targets). The *connect time* is the client-side handshake: from the ``connect()`` call
to its return, i.e. the SYN's trip through the data plane's lookup (the rule walk, the map
lookup, the forwarder's accept) and back. The *request latency* of the same connection
(``GET /``, until the whole response is read) runs from the intended send
time, so a late start counts against it; the lateness itself is kept too. Failures (refused,
reset, timeout, a non-2xx status) are rows like any other, never dropped.

One thread: the connect is a blocking call (less jitter than an event loop's wake-ups), and
the responses are read without blocking while waiting for the next due time, so a slow
response never holds the next connection back (open loop).
"""

from __future__ import annotations

import selectors
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from lbbench.model.addresses import HostPort

_REQUEST = b"GET / HTTP/1.1\r\nHost: scale\r\nConnection: close\r\n\r\n"


@dataclass
class ProbeRows:
    """One row per connection (parallel lists), in send order."""

    target: list[int] = field(default_factory=list)  # index into the probe's targets
    late_ns: list[int] = field(default_factory=list)  # actual start - intended start
    connect_ns: list[int] = field(default_factory=list)  # -1 when the connect failed
    request_ns: list[int] = field(default_factory=list)  # from the intended send time; -1 on failure
    error: list[str] = field(default_factory=list)  # "" when the request got a 2xx

    def add(self, target: int, late_ns: int, connect_ns: int, error: str) -> int:
        self.target.append(target)
        self.late_ns.append(late_ns)
        self.connect_ns.append(connect_ns)
        self.request_ns.append(-1)
        self.error.append(error)
        return len(self.target) - 1


@dataclass
class _Pending:
    """A request sent, its response being read (non-blocking)."""

    row: int
    due_ns: int
    data: bytes = b""


def response_state(data: bytes) -> str | None:
    """None while incomplete; "" for a complete 2xx response; otherwise what it was."""
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        return None
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip() or 0)
    if len(body) < length:
        return None
    status = head[9:12]
    return "" if status.startswith(b"2") else f"status {status.decode(errors='replace') or 'none'}"


class _Reader:
    """Reads every open response between sends, so the next connection is never held back by one."""

    def __init__(self, rows: ProbeRows, timeout_s: float) -> None:
        self.rows = rows
        self.timeout_ns = int(timeout_s * 1e9)
        self.selector = selectors.DefaultSelector()

    def add(self, sock: socket.socket, pending: _Pending) -> None:
        sock.setblocking(False)
        self.selector.register(sock, selectors.EVENT_READ, pending)

    def _finish(self, sock: socket.socket, pending: _Pending, error: str) -> None:
        self.selector.unregister(sock)
        sock.close()
        self.rows.error[pending.row] = error
        if not error:
            self.rows.request_ns[pending.row] = time.perf_counter_ns() - pending.due_ns

    def poll(self, wait_s: float) -> None:
        for key, _ in self.selector.select(max(wait_s, 0.0)):
            sock, pending = key.fileobj, key.data
            assert isinstance(sock, socket.socket) and isinstance(pending, _Pending)
            try:
                chunk = sock.recv(65536)
            except OSError as e:
                self._finish(sock, pending, f"request: {type(e).__name__}")
                continue
            pending.data += chunk
            state = response_state(pending.data)
            if state is not None or not chunk:
                self._finish(sock, pending, "truncated" if state is None else state)
        now = time.perf_counter_ns()
        for key in list(self.selector.get_map().values()):
            pending = key.data
            if now - pending.due_ns > self.timeout_ns:
                self._finish(key.fileobj, pending, "timeout")  # type: ignore[arg-type]

    def drain(self) -> None:
        while self.selector.get_map():
            self.poll(0.01)
        self.selector.close()


def _connect(addr: HostPort, timeout_s: float) -> tuple[socket.socket | None, int, str]:
    """(connected socket or None, connect ns or -1, error)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(timeout_s)
    t0 = time.perf_counter_ns()
    try:
        sock.connect((addr.host, addr.port))
    except OSError as e:
        sock.close()
        return None, -1, f"connect: {type(e).__name__}"
    return sock, time.perf_counter_ns() - t0, ""


def probe(targets: Sequence[HostPort], connections: int, rate_rps: float, timeout_s: float = 2.0) -> ProbeRows:
    """`connections` new connections at `rate_rps`, round robin over `targets`."""
    rows = ProbeRows()
    reader = _Reader(rows, timeout_s)
    period_ns = int(1e9 / rate_rps)
    start = time.perf_counter_ns() + 20_000_000
    try:
        for i in range(connections):
            due = start + i * period_ns
            reader.poll(0.0)  # responses are read even when the sends run behind schedule
            while (wait := due - time.perf_counter_ns()) > 0:
                reader.poll(wait / 1e9)
            began = time.perf_counter_ns()
            k = i % len(targets)
            sock, connect, error = _connect(targets[k], timeout_s)
            row = rows.add(k, began - due, connect, error or "pending")
            if sock is None:
                continue
            try:
                sock.sendall(_REQUEST)
            except OSError as e:
                sock.close()
                rows.error[row] = f"request: {type(e).__name__}"
                continue
            reader.add(sock, _Pending(row, due))
    finally:
        reader.drain()
    return rows
