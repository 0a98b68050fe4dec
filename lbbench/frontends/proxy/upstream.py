"""Connections from the proxy to backends: one HTTP/1.1 request at a time, kept alive in a per-backend pool.

The response is parsed with llhttp (httptools.HttpResponseParser) and handed piece by piece
to the client side; the client's write buffer pauses this connection's reading (flow control).
A connection that fails reports the failure kind to the client side, which asks the Service's
pool whether to retry.
"""

from __future__ import annotations

import asyncio
import socket
import sys
import time
import traceback
from collections.abc import Callable
from typing import TYPE_CHECKING, cast

from httptools import HttpParserError, HttpResponseParser

from lbbench.frontends.proxy.backend import CONNECT_FAILED, PROTOCOL, RESET, RESET_AFTER, TIMEOUT, Backend
from lbbench.frontends.proxy.exchange import CONNECTING, Exchange
from lbbench.frontends.proxy.http import (
    CONNECTION,
    CRLF,
    DROP,
    LENGTH_FIELD,
    NO_BODY,
    PASS,
    UNKNOWN,
    UNTIL_CLOSE,
    Fields,
    Special,
    declares_hop_by_hop,
    known_response_role,
    response_role,
)
from lbbench.system.compiled import proxy_heads

if TYPE_CHECKING:
    from lbbench.frontends.proxy.queue import ServicePool

_HEADS = proxy_heads()
# (status, reason, forwarded fields, body, keep-alive) of one whole plain response, else None
ScanResponse = Callable[[bytes], "tuple[int, bytes, bytes, bytes, bool] | None"]
SCAN_RESPONSE: ScanResponse | None = _HEADS.response if _HEADS is not None else None

UPSTREAM_IDLE_S = 30.0  # below aiohttp's 75 s keep-alive, so that the pod never closes first


class BadResponse(Exception):
    """The backend sent something the proxy will not forward."""


class OutOfStep(BadResponse):
    """Bytes after a complete response in the same read: nobody asked for them.

    The response stands; the connection goes. Kept, the bytes would be parsed as the answer to the
    next request on it (a stale response handed to another client) or would garble that answer.
    """


class UpstreamConnection(asyncio.Protocol):
    __slots__ = (
        "backend", "closed", "deadline", "done", "done_keep", "ex", "fields", "framing", "got_bytes", "has_length",
        "head_done", "interim", "parser", "paused", "pool", "read_at", "reason", "scan", "server_timeout_s",
        "special", "transport",
    )

    def __init__(self, backend: Backend, pool: ServicePool) -> None:
        self.backend = backend
        self.pool = pool
        self.server_timeout_s = pool.settings.server_timeout_s
        self.transport: asyncio.Transport | None = None
        self.parser = HttpResponseParser(self)
        # The C scan of one whole plain response (lbbench/frontends/proxy/_heads.c), None without it:
        # what it declines, and a response that takes more than one read, goes to llhttp.
        self.scan = SCAN_RESPONSE
        self.ex: Exchange | None = None
        # its response completed in the read being parsed: delivered once the whole read is parsed,
        # so that whether more bytes followed it is known before the connection is reused
        self.done: Exchange | None = None
        self.done_keep = False  # its should_keep_alive(), read when it completed (llhttp resets it after)
        self.closed = False
        self.paused = False
        self.deadline = 0.0
        self.read_at = 0.0  # when the bytes being parsed arrived: the clock of what they complete
        self.got_bytes = False
        self.head_done = False
        self.interim = False
        self.framing = NO_BODY
        # The response head being parsed: forwarded fields (after a slot for the status line),
        # Content-Length seen, fields that need a decision.
        self.reason = b""
        self.fields: Fields = [b""]
        self.has_length = False
        self.special: Special = ()

    # -- life cycle ---------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports are not subclasses
        self.backend.conns.add(self)
        self.pool.upstreams.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._forget()
        ex, self.ex = self.ex, None
        if ex is None:
            return
        if self.head_done and self.framing == UNTIL_CLOSE:
            ex.client.response_done(ex, self, False)  # EOF is the end of a close-delimited body
        else:
            ex.client.upstream_failed(ex, RESET_AFTER if self.got_bytes else RESET)

    def eof_received(self) -> bool:
        return False

    def _forget(self) -> None:
        self.closed = True
        self.deadline = 0.0
        self.backend.conns.discard(self)
        self.pool.upstreams.discard(self)
        if self in self.backend.idle:
            self.backend.idle.remove(self)

    def peer_closed(self) -> bool:
        """Has the backend closed this idle connection (EOF queued, not yet seen by the loop)?

        One MSG_PEEK syscall; worth it only for requests that cannot be replayed: a pod that
        dies leaves its idle connections closed a moment before the loop learns it.
        """
        if self.transport is None:
            return True
        sock = self.transport.get_extra_info("socket")
        if sock is None:
            return False
        peek = socket.socket(socket.AF_INET, socket.SOCK_STREAM, 0, sock.fileno())
        try:
            return peek.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
        except BlockingIOError:
            return False
        except OSError:
            return True
        finally:
            peek.detach()

    def attach(self, ex: Exchange, now: float = 0.0) -> None:
        self.ex = ex
        self.got_bytes = self.head_done = self.interim = self.has_length = False
        self.reason = b""
        self.fields = [b""]
        self.special = ()
        self.deadline = (now or time.monotonic()) + self.server_timeout_s
        ex.client.attached(ex, self)

    def release(self, reusable: bool, now: float = 0.0) -> None:
        """Back to the idle pool after a complete exchange, or closed."""
        self.ex = None
        if not reusable or self.closed or not self.backend.usable:  # usable: not draining, down or ejected
            self.close()
            return
        if self.paused:
            self.resume()
        self.deadline = (now or time.monotonic()) + UPSTREAM_IDLE_S
        self.backend.idle.append(self)

    def close(self) -> None:
        self.ex = None
        if self.transport is not None and not self.closed:
            self.transport.close()
        self._forget()

    def abort(self) -> None:
        """Drop the connection without reporting to the exchange (which already knows)."""
        self.ex = None
        if self.transport is not None and not self.closed:
            self.transport.abort()
        self._forget()

    def on_deadline(self) -> None:
        ex = self.ex
        if ex is None:
            self.close()  # idle too long
            return
        self.abort()
        ex.client.upstream_failed(ex, RESET_AFTER if self.got_bytes else TIMEOUT)

    # -- flow control -------------------------------------------------------------------------

    def pause(self) -> None:
        """The client is not reading: stop reading the backend (and its timeout is not the backend's fault)."""
        if not self.paused and self.transport is not None:
            self.paused = True
            self.deadline = 0.0
            self.transport.pause_reading()

    def resume(self) -> None:
        if self.paused and self.transport is not None:
            self.paused = False
            if self.ex is not None:
                self.deadline = time.monotonic() + self.server_timeout_s
            self.transport.resume_reading()

    def pause_writing(self) -> None:
        if self.ex is not None:
            self.ex.client.upstream_backpressure(True)

    def resume_writing(self) -> None:
        if self.ex is not None:
            self.ex.client.upstream_backpressure(False)

    # -- the response -------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        ex = self.ex
        if ex is None:
            self.close()  # bytes nobody asked for: the connection is out of step
            return
        if not self.got_bytes and self.scan is not None and not ex.is_head:
            found = self.scan(data)
            if found is not None:
                self._whole(ex, *found)
                return
        self.got_bytes = True
        self.read_at = now = time.monotonic()
        self.deadline = now + self.server_timeout_s
        client = ex.client
        try:
            self.parser.feed_data(data)
        except HttpParserError as e:
            if e.__context__ is not None and not isinstance(e.__context__, BadResponse):
                traceback.print_exception(e.__context__, file=sys.stderr)
            done, self.done = self.done, None
            if done is not None:  # a whole response, then bytes nobody asked for (OutOfStep) or garbage
                done.client.response_done(done, self, False, now)
            else:
                cur = self.ex
                self.abort()
                if cur is not None:
                    cur.client.upstream_failed(cur, PROTOCOL)
        done = self.done
        if done is not None:
            self.done = None
            done.client.response_done(done, self, self.done_keep, now)
        if client.wbuf:
            client.flush()

    def _whole(self, ex: Exchange, status: int, reason: bytes, fields: bytes, body: bytes, keep_alive: bool) -> None:
        """A whole plain response the C scan read: what llhttp's callbacks and data_received would do with it."""
        self.got_bytes = self.head_done = True
        self.read_at = now = time.monotonic()
        self.reason = reason
        self.fields = [b"", fields]  # the status line's slot, then the forwarded fields as one piece
        self.has_length = True
        client = ex.client
        self.framing = client.response_head(ex, status, self)
        if body:
            client.response_body(ex, body)
        self.ex = None
        client.response_done(ex, self, keep_alive, now)
        if client.wbuf:
            client.flush()

    def on_message_begin(self) -> None:
        if self.ex is None:
            raise OutOfStep("bytes after a complete response")

    def on_status(self, status: bytes) -> None:
        self.reason += status

    def on_header(self, name: bytes, value: bytes) -> None:
        role = known_response_role(name, UNKNOWN)
        if role == PASS:
            self.fields += (name, b": ", value, CRLF)
        elif role == LENGTH_FIELD:
            self.fields += (name, b": ", value, CRLF)
            self.has_length = True
        elif role == UNKNOWN:
            response_role(name)  # remembered from now on
            self.on_header(name, value)
        elif role == DROP or (role == CONNECTION and not declares_hop_by_hop(value)):
            pass  # hop-by-hop, and nothing to decide: the keep-alive answer is llhttp's (should_keep_alive)
        else:
            self.special += ((role, name, value),)

    def on_headers_complete(self) -> None:
        ex = self.ex
        if ex is None:
            return
        status = self.parser.get_status_code()
        if status < 200:
            if status == 101:
                raise BadResponse("101 Switching Protocols to a request that did not ask")
            self.interim = True  # 100 Continue and friends: the real response follows
            self.reason = b""
            self.fields = [b""]
            self.has_length = False
            self.special = ()
            return
        self.head_done = True
        self.framing = ex.client.response_head(ex, status, self)
        if ex.is_head and self.ex is ex:
            # llhttp cannot be told that a HEAD response has no body; finish here, do not reuse.
            self.ex = None
            ex.client.response_done(ex, self, False, self.read_at)

    def on_body(self, data: bytes) -> None:
        ex = self.ex
        if ex is not None:
            ex.client.response_body(ex, data)

    def on_message_complete(self) -> None:
        if self.interim:
            self.interim = False
            return
        self.done, self.ex = self.ex, None  # data_received delivers it
        self.done_keep = self.parser.should_keep_alive()


def open_upstream(pool: ServicePool, backend: Backend, ex: Exchange) -> None:
    """Attach `ex` to an idle connection of `backend`, or connect a new one in the background."""
    idle = backend.idle
    while idle:  # LIFO: the most recently used connection is the least likely to have been closed by the pod
        conn = idle.pop()
        t = conn.transport
        if conn.closed or t is None or t.is_closing():
            continue  # closed while idle
        if not ex.idempotent and conn.peer_closed():
            conn.close()  # a request that cannot be replayed goes only where nobody has hung up
            continue
        conn.attach(ex, ex.dispatched_at)
        return
    task = asyncio.get_running_loop().create_task(_connect(pool, backend, ex, ex.attempts))
    pool.tasks.add(task)
    task.add_done_callback(pool.tasks.discard)


async def _connect(pool: ServicePool, backend: Backend, ex: Exchange, attempt: int) -> None:
    loop = asyncio.get_running_loop()
    host, port = backend.addr
    try:
        _, conn = await asyncio.wait_for(
            loop.create_connection(lambda: UpstreamConnection(backend, pool), host, port),
            pool.settings.connect_timeout_s,
        )
    except (OSError, TimeoutError):
        if ex.backend is backend and ex.attempts == attempt and ex.state == CONNECTING:
            ex.client.upstream_failed(ex, CONNECT_FAILED)
        else:
            pool.note_failure(backend, CONNECT_FAILED)
        return
    if ex.backend is backend and ex.attempts == attempt and ex.state == CONNECTING:
        conn.attach(ex)
    else:
        conn.release(True)  # the client left meanwhile: keep the connection for the next request
