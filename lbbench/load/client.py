"""A raw HTTP/1.1 client on `asyncio.Protocol` for the load generator's hot path.

One `HttpClient` per worker. `issue(intended)` starts a request at once and never blocks:
in `close` mode every request opens its own TCP connection (with `Connection: close`); in
`keepalive:K` mode the client owns K persistent connections: the first K requests open
them, later ones rotate over them (least recently used first), and a request that finds
them all busy waits in the client, first come first served (its latency still counts from
the intended time). A broken or timed-out connection is dropped and a new one (new
conn_id) is opened by the next request.

In a load generator worker, the load runs on the native engine instead where it is built
(lbbench/load/_engine.c, driven by lbbench.load.native; the same semantics in both modes, which
tests/load/test_engine.py holds the two to); this client runs it when the engine is not built or
LBBENCH_PURE_CLIENT=1.

Every request ends exactly once, through `on_done(request)`, with `error` one of
:data:`ERROR_KINDS` ("" when ok). `reset` covers a connection reset or closed by the peer
before any response byte arrived (what curl calls "empty reply"); `unreachable` is an ICMP
host- or network-unreachable for the address (EHOSTUNREACH, ENETUNREACH: a pod whose network
is gone while its endpoint is still programmed); `truncated` is a connection that ended in
the middle of a response. Timeouts count from the intended send
time (the user waits from then on); the connect timeout counts from the connect attempt.

A read that holds exactly one whole plain HTTP/1.1 response (the common case) is taken in
one call of `lbbench.load.head.scan` (C: 2.7k instructions against ~34k for httptools'
callback per header field); anything else, and everything when the C module is not built,
is parsed with httptools (1xx interim responses skipped: the final response ends the request), and
bodies are discarded as they arrive, so nothing accumulates and reading never needs to be paused; writes are one small
request at a time per connection, so there is no write backlog to apply back-pressure to either.

Per request the hot path allocates only its `Request` and what the scan returns (a tuple,
the strings and floats of the fields): one parser per connection (reused across keep-alive
responses, and told apart from a new head by `in_message`), header names looked up once per
spelling, and timeouts kept in one queue in deadline order with a single loop timer for its
head instead of a timer handle per request.
"""

from __future__ import annotations

import asyncio
import collections
import errno
import math
import time
from collections.abc import Callable
from typing import cast

import httptools

from lbbench.load import head
from lbbench.model.addresses import HostPort
from lbbench.model.load import ConnectionMode

ERROR_KINDS = ("refused", "reset", "timeout", "connect_timeout", "unreachable", "truncated", "http_5xx", "http_4xx",
               "other")
_UNREACHABLE = (errno.EHOSTUNREACH, errno.ENETUNREACH)  # an ICMP unreachable answered for the address

# what each interesting response header (lower case) is for
_POD, _POD_IP, _QUEUE_MS, _SERVICE_MS, _LENGTH, _PROXY_QUEUE_MS, _PROXY_UPSTREAM_MS = range(7)
_HEADERS = {b"x-pod": _POD, b"x-pod-ip": _POD_IP, b"x-queue-ms": _QUEUE_MS, b"x-service-ms": _SERVICE_MS,
            b"content-length": _LENGTH, b"transfer-encoding": _LENGTH,
            b"x-proxy-queue-ms": _PROXY_QUEUE_MS, b"x-proxy-upstream-ms": _PROXY_UPSTREAM_MS}
_IGNORED = -1
# raw header name (any spelling) -> what it is for; filled as names are seen, bounded
_NAME_CACHE: dict[bytes, int] = {}
_NAME_CACHE_MAX = 4096


def _header_kind(name: bytes) -> int:
    kind = _HEADERS.get(name.lower(), _IGNORED)
    if len(_NAME_CACHE) < _NAME_CACHE_MAX:
        _NAME_CACHE[name] = kind
    return kind


def _interim(status: int) -> bool:
    """A 1xx response other than 101 (a protocol switch, which httptools reports as an error)."""
    return 100 <= status < 200 and status != 101


def build_request(path: str, host: str, close: bool) -> bytes:
    lines = [f"GET {path} HTTP/1.1", f"Host: {host}", "User-Agent: lbbench-load", "Accept: */*"]
    if close:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


class Request:
    """One request's record; filled in as it goes, handed to `on_done` once."""

    __slots__ = (
        "conn", "conn_id", "done", "error", "finished", "freed", "intended", "issued", "new_conn", "pod", "pod_ip",
        "proxy_queue_ms", "proxy_upstream_ms", "queue_ms", "sent", "service_ms", "status", "tag",
    )

    def __init__(self, intended: float, issued: float, tag: int) -> None:
        self.intended = intended
        self.issued = issued  # when the generator took it up (lateness = issued - intended)
        self.sent = math.nan  # when its bytes (or, in close mode, its SYN) left
        # when the answer that freed its keep-alive connection reached the socket, by the kernel's stamp;
        # only the native client reads stamps: NaN here, so the whole wait counts as the client's own
        self.freed = math.nan
        self.done = math.nan
        self.status = 0
        self.error = ""
        self.pod = ""
        self.pod_ip = ""
        self.queue_ms = math.nan
        self.service_ms = math.nan
        self.proxy_queue_ms = math.nan  # lbbench's l7-proxy: time in its central queue, and
        self.proxy_upstream_ms = math.nan  # from dispatch to the backend's response head
        self.conn_id = -1
        self.new_conn = False
        self.tag = tag
        self.finished = False
        self.conn: _Conn | None = None


def classify_os_error(exc: BaseException | None, connecting: bool) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "refused"
    if isinstance(exc, ConnectionResetError | BrokenPipeError | ConnectionAbortedError):
        return "reset"
    if isinstance(exc, TimeoutError) or (isinstance(exc, OSError) and exc.errno == errno.ETIMEDOUT):
        return "connect_timeout" if connecting else "timeout"
    if isinstance(exc, OSError) and exc.errno in _UNREACHABLE:
        return "unreachable"
    return "other"


class _Conn(asyncio.Protocol):
    """One TCP connection carrying one request at a time."""

    __slots__ = (
        "client", "closed", "complete", "conn_id", "connect_task", "connect_timer", "got_bytes", "headers_done",
        "in_message", "keep_alive", "length_known", "parser", "req", "served", "transport",
    )

    def __init__(self, client: HttpClient, conn_id: int) -> None:
        self.client = client
        self.conn_id = conn_id
        self.transport: asyncio.Transport | None = None
        self.req: Request | None = None
        self.served = 0
        self.closed = False
        self.connect_task: asyncio.Task[None] | None = None
        self.connect_timer: asyncio.TimerHandle | None = None
        # one parser for the connection's life: after a complete response it parses the next
        self.parser: httptools.HttpResponseParser | None = httptools.HttpResponseParser(self)
        self.got_bytes = False
        self.headers_done = False
        self.length_known = False
        self.complete = False
        self.keep_alive = True
        # httptools is inside a response (begun, not complete): its next bytes are not a new head
        self.in_message = False

    # -- sending ---------------------------------------------------------------------------
    def send(self, req: Request) -> None:
        assert self.transport is not None
        self.req = req
        req.conn = self
        req.conn_id = self.conn_id
        req.new_conn = self.served == 0
        if req.sent != req.sent:  # NaN: not yet stamped by the caller
            req.sent = time.monotonic()
        self.served += 1
        self.got_bytes = self.headers_done = self.length_known = self.complete = False
        self.transport.write(self.client.request_bytes)

    # -- httptools callbacks -------------------------------------------------------------------
    def on_message_begin(self) -> None:
        self.in_message = True

    def on_header(self, name: bytes, value: bytes) -> None:
        what = _NAME_CACHE.get(name)
        if what == _IGNORED:
            return  # most fields (Date, Server, Content-Type...): decided first
        if what is None:
            what = _header_kind(name)
        req = self.req
        if what == _IGNORED or req is None:
            return
        try:
            if what == _POD:
                req.pod = value.decode("latin-1")
            elif what == _POD_IP:
                req.pod_ip = value.decode("latin-1")
            elif what == _QUEUE_MS:
                req.queue_ms = float(value)
            elif what == _SERVICE_MS:
                req.service_ms = float(value)
            elif what == _PROXY_QUEUE_MS:
                req.proxy_queue_ms = float(value)
            elif what == _PROXY_UPSTREAM_MS:
                req.proxy_upstream_ms = float(value)
            else:
                self.length_known = True
        except ValueError:
            pass  # a malformed timing header is just missing

    def on_headers_complete(self) -> None:
        parser = self.parser
        if parser is not None and _interim(parser.get_status_code()):
            return  # a 1xx interim response (100 Continue, 103 Early Hints): the real one follows
        self.headers_done = True
        if self.req is not None and parser is not None:
            self.req.status = parser.get_status_code()
            self.keep_alive = bool(parser.should_keep_alive())

    def on_message_complete(self) -> None:
        self.in_message = False
        parser = self.parser
        if parser is None or not _interim(parser.get_status_code()):
            self.complete = True
        elif not parser.should_keep_alive():
            # an interim response that ends the connection ("HTTP/1.0 100"): llhttp takes nothing after
            # it, so neither may the whole-response scan (found by test_head's generated responses)
            self.in_message = True

    # -- asyncio.Protocol ---------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's TCPTransport is no subclass of it

    def data_received(self, data: bytes) -> None:
        req, parser = self.req, self.parser
        if req is None or parser is None:
            self.abort()  # bytes nobody asked for: the connection is out of step
            return
        scan = head.scan
        if scan is not None and not self.got_bytes and not self.in_message:
            # the first bytes of this response, and httptools between responses: if they are one
            # whole plain response, take it in one go (the same record httptools would make)
            fast = scan(data)
            if fast is not None:
                self.got_bytes = self.headers_done = self.length_known = self.complete = True
                (req.status, self.keep_alive, req.pod, req.pod_ip, req.queue_ms, req.service_ms, req.proxy_queue_ms,
                 req.proxy_upstream_ms) = fast
                self.client.response_complete(self)
                return
        self.got_bytes = True
        try:
            parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade):  # the latter is no subclass of the former
            self.client.fail(req, "other")
            self.abort()
            return
        if self.complete:
            self.client.response_complete(self)

    def eof_received(self) -> bool:
        if self.req is not None and self.headers_done and not self.length_known and not self.complete:
            # a body delimited by the end of the connection (HTTP/1.0 style): that end completes it
            self.keep_alive = False
            self.client.response_complete(self)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.parser = None  # it refers back to us: without this cycle, a closed connection is freed at once
        self.client.conn_lost(self, exc)

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None and not self.transport.is_closing():
            self.transport.abort()


class HttpClient:
    """Issues requests to one target; see the module docstring for the connection modes."""

    def __init__(
        self,
        target: HostPort,
        request_bytes: bytes,
        mode: ConnectionMode,
        on_done: Callable[[Request], None],
        *,
        pool_size: int = 0,
        connect_timeout_s: float = 1.0,
        timeout_s: float = 10.0,
        conn_id_base: int = 0,
        conn_id_step: int = 1,
    ) -> None:
        self.loop = asyncio.get_running_loop()
        self.target = target
        self.request_bytes = request_bytes
        self.keepalive = mode.kind == "keepalive"
        self.pool_size = pool_size if self.keepalive else 0
        if self.keepalive and self.pool_size < 1:
            raise ValueError("keepalive needs a pool of at least one connection")
        self.on_done = on_done
        self.connect_timeout_s = connect_timeout_s
        self.timeout_s = timeout_s
        self._conn_id_next = conn_id_base
        self._conn_id_step = conn_id_step
        self.outstanding = 0
        self.conns: set[_Conn] = set()  # open or connecting
        self.idle: collections.deque[_Conn] = collections.deque()
        self.waiting: collections.deque[Request] = collections.deque()
        self._idle_waiters: list[asyncio.Future[None]] = []
        # every request still to be settled, in issue order, which is deadline order (deadline =
        # intended + timeout_s, and intended times are issued in order); one loop timer for the head
        self._deadlines: collections.deque[Request] = collections.deque()
        self._sweep_handle: asyncio.TimerHandle | None = None
        self._sweeping = False

    # -- public ------------------------------------------------------------------------------
    def issue(self, intended: float, tag: int = -1) -> Request:
        """Start one request now (never blocks); `on_done` gets it when it ends."""
        now = time.monotonic()
        req = Request(intended, now, tag)
        self.outstanding += 1
        # _watch(req), inlined: every request takes this path (~1k instructions less a request)
        deadlines = self._deadlines
        while deadlines and deadlines[0].finished:
            deadlines.popleft()
        deadlines.append(req)
        if self._sweep_handle is None and not self._sweeping:
            self._arm_sweep(now)
        if not self.keepalive:
            self._open(req)
        elif self.idle and not self.waiting and len(self.conns) >= self.pool_size:
            req.sent = now  # a free pooled connection: it leaves at once
            self.idle.popleft().send(req)
        else:
            self.waiting.append(req)
            self._pump()
        return req

    async def wait_idle(self) -> None:
        """Until no request is outstanding."""
        if self.outstanding:
            fut = self.loop.create_future()
            self._idle_waiters.append(fut)
            await fut

    def abort_all(self) -> int:
        """Drop every outstanding request without reporting it; close all connections."""
        dropped = 0
        for conn in list(self.conns):
            req = conn.req
            if req is not None and not req.finished:
                self._end(req)
                dropped += 1
            self._kill(conn)
        for req in self.waiting:
            if not req.finished:
                self._end(req)
                dropped += 1
        self.waiting.clear()
        self._check_idle()
        return dropped

    def close(self) -> None:
        self.abort_all()
        if self._sweep_handle is not None:
            self._sweep_handle.cancel()
            self._sweep_handle = None

    # -- connections ---------------------------------------------------------------------------
    def _open(self, req: Request | None) -> _Conn:
        conn = _Conn(self, self._conn_id_next)
        self._conn_id_next += self._conn_id_step
        conn.req = req
        if req is not None:
            req.conn = conn
            req.conn_id, req.new_conn = conn.conn_id, True  # also when the connect fails
            if math.isnan(req.sent):
                req.sent = time.monotonic()  # the SYN is this request's first byte out
        self.conns.add(conn)
        conn.connect_task = self.loop.create_task(self._connect(conn))
        conn.connect_timer = self.loop.call_later(self.connect_timeout_s, self._connect_timed_out, conn)
        return conn

    async def _connect(self, conn: _Conn) -> None:
        try:
            await self.loop.create_connection(lambda: conn, self.target.host, self.target.port)
        except asyncio.CancelledError:
            conn.abort()  # a timeout or abort_all already settled it; a transport made just now must go too
            return
        except OSError as e:
            self._connect_failed(conn, classify_os_error(e, connecting=True))
            return
        finally:
            conn.connect_task = None
            if conn.connect_timer is not None:
                conn.connect_timer.cancel()
                conn.connect_timer = None
        self._connected(conn)

    def _connected(self, conn: _Conn) -> None:
        req, conn.req = conn.req, None
        if conn.closed or conn not in self.conns:
            self._kill(conn)
            return
        if req is not None and not req.finished:
            conn.send(req)
        elif self.keepalive:
            self._release(conn)
        else:
            self._kill(conn)

    def _connect_timed_out(self, conn: _Conn) -> None:
        conn.connect_timer = None
        if conn.connect_task is not None:
            conn.connect_task.cancel()
            conn.connect_task = None
        self._connect_failed(conn, "connect_timeout")

    def _connect_failed(self, conn: _Conn, error: str) -> None:
        self.conns.discard(conn)
        conn.closed = True
        req, conn.req = conn.req, None
        if req is not None and not req.finished:
            self.fail(req, error)
        self._pump()

    def _kill(self, conn: _Conn) -> None:
        """Close a connection for good (no report: its request, if any, is settled)."""
        self.conns.discard(conn)
        self._unidle(conn)
        if conn.connect_task is not None:
            conn.connect_task.cancel()
            conn.connect_task = None
        if conn.connect_timer is not None:
            conn.connect_timer.cancel()
            conn.connect_timer = None
        conn.req = None
        conn.abort()

    def _unidle(self, conn: _Conn) -> None:
        if conn in self.idle:  # at most K entries; close mode has none
            self.idle.remove(conn)

    def _release(self, conn: _Conn) -> None:
        """A keep-alive connection is free again: serve the next waiting request, or go idle."""
        while self.waiting:
            req = self.waiting.popleft()
            if not req.finished:
                req.sent = time.monotonic()
                conn.send(req)
                return
        self.idle.append(conn)

    def _pump(self) -> None:
        """Hand waiting requests to new connections until the pool is full, then to idle ones.

        Idle connections are used least recently used first, so requests rotate over all K
        (behind a per-connection balancer, over all K backends) even at a low rate.
        """
        waiting = self.waiting
        while waiting:
            if waiting[0].finished:
                waiting.popleft()
            elif len(self.conns) < self.pool_size:
                self._open(waiting.popleft())
            elif self.idle:
                self._release(self.idle.popleft())
            else:
                return

    # -- responses and failures -------------------------------------------------------------------
    def response_complete(self, conn: _Conn) -> None:
        req, conn.req = conn.req, None
        if req is None:
            return
        status = req.status
        error = "http_5xx" if status >= 500 else "http_4xx" if status >= 400 else ""
        reuse = self.keepalive and conn.keep_alive and not conn.closed
        self._finish(req, error)
        if reuse:
            self._release(conn)
        else:
            self._kill_gracefully(conn)
            self._pump()

    def _kill_gracefully(self, conn: _Conn) -> None:
        self.conns.discard(conn)
        self._unidle(conn)
        conn.closed = True
        if conn.transport is not None:
            conn.transport.close()

    def conn_lost(self, conn: _Conn, exc: Exception | None) -> None:
        req, conn.req = conn.req, None
        was_ours = conn in self.conns
        self.conns.discard(conn)
        self._unidle(conn)
        if req is not None and not req.finished:
            if conn.got_bytes:
                self.fail(req, "truncated")
            else:
                self.fail(req, "reset" if exc is None else classify_os_error(exc, connecting=False))
        if was_ours:
            self._pump()

    def _arm_sweep(self, now: float) -> None:
        """Wake up at the deadline of the oldest request not yet settled (if any)."""
        deadlines = self._deadlines
        while deadlines and deadlines[0].finished:
            deadlines.popleft()
        if deadlines:
            # uvloop's timers have 1 ms granularity: never less, so an early wake-up cannot spin
            delay = deadlines[0].intended + self.timeout_s - now
            self._sweep_handle = self.loop.call_later(delay if delay > 1e-3 else 1e-3, self._sweep)

    def _sweep(self) -> None:
        """Time out every request whose deadline has passed, then wait for the next deadline.

        Issue order is deadline order up to a few microseconds (a closed-loop user's intended
        time is taken just before it is issued), so only the front of the queue is looked at.
        """
        self._sweep_handle = None
        self._sweeping = True
        deadlines = self._deadlines
        due = time.monotonic() - self.timeout_s  # requests intended at or before this are out of time
        try:
            while deadlines and (deadlines[0].finished or deadlines[0].intended <= due):
                self._timed_out(deadlines.popleft())  # on_done may issue new requests meanwhile
        finally:
            self._sweeping = False
        if self._sweep_handle is None:
            self._arm_sweep(time.monotonic())

    def _timed_out(self, req: Request) -> None:
        if req.finished:
            return
        conn = req.conn
        connecting = conn is not None and conn.transport is None
        self.fail(req, "timeout")
        if conn is not None and conn.req is req:
            conn.req = None
            if not (connecting and self.keepalive):  # a pool connection still coming up stays useful
                self._kill(conn)
            self._pump()

    def fail(self, req: Request, error: str) -> None:
        self._finish(req, error)

    def _finish(self, req: Request, error: str) -> None:
        if req.finished:
            return
        req.error = error
        req.done = time.monotonic()
        self._end(req)
        self.on_done(req)
        self._check_idle()

    def _end(self, req: Request) -> None:
        req.finished = True
        req.conn = None
        self.outstanding -= 1
        if self.outstanding == 0:
            self._deadlines.clear()  # all settled: the sweep, if still armed, finds nothing to do

    def _check_idle(self) -> None:
        if self.outstanding == 0 and self._idle_waiters:
            waiters, self._idle_waiters = self._idle_waiters, []
            for fut in waiters:
                if not fut.done():
                    fut.set_result(None)
