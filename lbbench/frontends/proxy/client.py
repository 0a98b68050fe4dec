"""The client side of the proxy: one asyncio.Protocol per client connection.

Requests arrive from a RequestReader (proxy_request: llhttp, limits, routing), are admitted
to their Service's pool and streamed to the backend; responses are streamed back in order. One request is served at
a time per connection; pipelined requests wait their turn with reading paused. Reading is
also paused while the backend's write buffer is full or while a request body waits for a
backend beyond the retry buffer; the backend's reading is paused while ours is full.

Hostile input ends the connection with a clear status: malformed -> 400, head too large ->
431, body too large -> 413, too slow -> 408; the final response is followed by a lingering
close (FIN, then discard input until the client closes or LINGER_S passes).
"""

from __future__ import annotations

import asyncio
import collections
import time
from typing import TYPE_CHECKING, cast

from lbbench.frontends.proxy.backend import CONNECT_FAILED, TIMEOUT, UNREACHABLE
from lbbench.frontends.proxy.exchange import (
    ACTIVE,
    CANCELLED,
    CONNECTING,
    DONE,
    QUEUED,
    RETRY_BUFFER,
    Exchange,
)
from lbbench.frontends.proxy.http import (
    CHUNKED,
    CONTINUE_100,
    CRLF,
    LAST_CHUNK,
    NO_BODY,
    chunk_size_line,
    client_head,
    error_response,
)
from lbbench.frontends.proxy.request import RequestReader

if TYPE_CHECKING:
    from lbbench.frontends.proxy.app import ProxyApp
    from lbbench.frontends.proxy.upstream import UpstreamConnection

LINGER_S = 2.0
# Why reading is paused (a bit each; reading resumes when none is left).
P_UPSTREAM, P_BUFFER, P_PIPELINE, P_STOP = 1, 2, 4, 8


class ClientConnection(asyncio.Protocol):
    def __init__(self, app: ProxyApp) -> None:
        self.app = app
        self.limits = app.config.limits
        self.client_timeout_s = app.config.settings.client_timeout_s
        self.transport: asyncio.Transport | None = None
        self.reader = RequestReader(self)
        self.current: Exchange | None = None  # the request whose response owns the connection
        self.pipeline: collections.deque[Exchange] = collections.deque()
        self.paused = 0
        self.write_paused = False
        self.deadline = 0.0  # reading (idle, head, body) or lingering
        self.write_deadline = 0.0  # the client does not read our response
        self.closing = False
        self.eof = False
        self.fatal: tuple[int, str] | None = None
        self.wbuf: list[bytes] = []  # response bytes produced during one backend read
        self._finishing = False
        self._finished: Exchange | None = None
        self.peer = b"unknown"

    # -- connection ---------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports are not subclasses
        peer = transport.get_extra_info("peername")
        if peer:
            self.peer = str(peer[0]).encode()
        self.app.clients.add(self)
        self.app.c["clients_accepted"] += 1
        if len(self.app.clients) > self.limits.max_clients:
            self.app.c["clients_refused"] += 1
            self.app.count_response(503)
            self._final(503, f"more than {self.limits.max_clients} client connections")
            return
        self.deadline = time.monotonic() + self.client_timeout_s

    def connection_lost(self, exc: Exception | None) -> None:
        self.app.clients.discard(self)
        self.closing = True
        for ex in (self.current, self.reader.parsing, *self.pipeline):
            if ex is not None:
                self._cancel(ex)
        self.current = self.reader.parsing = None
        self.pipeline.clear()

    def eof_received(self) -> bool:
        if self.reader.parsing is not None or self.current is None or self.closing:
            return False  # an unfinished request can never finish; nothing owed otherwise
        if self.current.state == QUEUED:
            return False  # gave up waiting (HAProxy's abortonclose): its place goes to the next one
        self.eof = True  # half-close while a backend works on it: answer, then close
        return True

    def _cancel(self, ex: Exchange, *, client_gone: bool = True) -> None:
        """Withdraw `ex` from its queue or backend (client_gone: count it as the client's abort)."""
        state = ex.state
        if state >= DONE:
            return
        if state == QUEUED and ex.pool is not None:
            ex.pool.cancel(ex)
        elif state in (CONNECTING, ACTIVE) and ex.pool is not None:
            up, ex.upstream = ex.upstream, None
            if up is not None:
                up.abort()
            ex.state = CANCELLED
            ex.pool.release(ex, ok=None)
        if client_gone and QUEUED <= state <= ACTIVE:
            self.app.c["client_aborts"] += 1
        ex.state = CANCELLED

    def on_deadline(self, now: float) -> None:
        t = self.transport
        if t is None:
            return
        if self.closing:
            t.abort()  # the lingering close is over
        elif self.write_deadline and now >= self.write_deadline:
            self.app.c["client_write_timeouts"] += 1
            t.abort()
        elif not self.deadline or now < self.deadline:
            return
        elif self.reader.parsing is not None or (self.current is not None and not self.current.request_done):
            self.app.c["client_timeouts"] += 1
            if self.current is not None and self.current.head_sent:
                t.abort()
            else:
                self.fail(408, f"request not received within client_timeout {self.client_timeout_s:g} s")
        elif self.current is None:
            t.close()  # idle keep-alive connection

    def _pause(self, reason: int) -> None:
        was = self.paused
        self.paused |= reason
        if not was and self.transport is not None and not self.transport.is_closing():
            self.transport.pause_reading()

    def _unpause(self, reason: int) -> None:
        if self.paused & reason:
            self.paused &= ~reason
            if not self.paused and self.transport is not None and not self.transport.is_closing():
                self.transport.resume_reading()

    def pause_writing(self) -> None:
        self.write_paused = True
        self.write_deadline = time.monotonic() + self.client_timeout_s
        ex = self.current
        if ex is not None and ex.upstream is not None:
            ex.upstream.pause()

    def resume_writing(self) -> None:
        self.write_paused = False
        self.write_deadline = 0.0
        ex = self.current
        if ex is not None and ex.upstream is not None:
            ex.upstream.resume()

    def upstream_backpressure(self, on: bool) -> None:
        if on:
            self._pause(P_UPSTREAM)
        else:
            self._unpause(P_UPSTREAM)

    # -- requests, from the RequestReader ------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)  # discarded while lingering

    def request_begins(self) -> None:
        if self.current is not None:
            self._pause(P_PIPELINE)  # a pipelined request: read no further until its turn

    def request_head(self, ex: Exchange) -> None:
        self.deadline = time.monotonic() + self.client_timeout_s if ex.framing != NO_BODY else 0.0
        if self.current is None:
            self.current = ex
            self._start(ex)
        else:
            self.pipeline.append(ex)

    def request_body(self, ex: Exchange, piece: bytes) -> None:
        self.deadline = time.monotonic() + self.client_timeout_s
        if ex.reject is None and ex.state < DONE:  # else discarded: an answer was or will be generated
            self._to_upstream(ex, piece)

    def request_complete(self, ex: Exchange) -> None:
        if ex is not self.current:
            return  # pipelined: its turn comes in _finish
        self.deadline = 0.0
        if ex.state >= DONE:
            self._finish(ex)  # the response was complete before the request was
        elif ex.reject is not None:
            self.respond_error(ex, *ex.reject)
        elif ex.framing == CHUNKED:
            self._to_upstream(ex, LAST_CHUNK)

    # -- towards the backend ------------------------------------------------------------------

    def _start(self, ex: Exchange) -> None:
        """`ex` now owns the connection: admit it to its Service's queue."""
        self.app.client_requests += 1
        if ex.reject is not None:
            if ex.request_done:
                self.respond_error(ex, *ex.reject)
            return
        if ex.framing == CHUNKED and ex.request_done:
            self._to_upstream(ex, LAST_CHUNK)  # pipelined chunked request, complete before its turn
        if ex.expect_continue and not ex.request_done:
            self._send(CONTINUE_100)
        assert ex.pool is not None
        ex.pool.admit(ex)

    def _to_upstream(self, ex: Exchange, piece: bytes) -> None:
        up = ex.upstream
        n = len(piece)
        if up is not None and up.transport is not None:
            up.transport.write(piece)
            if ex.replayable:
                if ex.out_bytes + n <= RETRY_BUFFER:
                    ex.out.append(piece)
                    ex.out_written += 1
                    ex.out_bytes += n
                else:
                    ex.replayable = False
                    ex.out = []
                    ex.out_written = ex.out_bytes = 0
        else:
            ex.out.append(piece)
            ex.out_bytes += n
            if ex.out_bytes > RETRY_BUFFER and ex is self.reader.parsing:
                self._pause(P_BUFFER)

    def attached(self, ex: Exchange, up: UpstreamConnection) -> None:
        """A backend connection is ready for `ex`: write what the request has so far."""
        ex.upstream = up
        ex.state = ACTIVE
        assert up.transport is not None
        out = ex.out
        if len(out) == 1 and not ex.out_written:
            up.transport.write(out[0])  # the common case: a request head, perhaps with its body
        else:
            up.transport.writelines(out[ex.out_written:] if ex.out_written else out)
        if ex.replayable and ex.out_bytes <= RETRY_BUFFER:
            ex.out_written = len(ex.out)
        else:
            ex.replayable = False
            ex.out = []
            ex.out_written = ex.out_bytes = 0
        if self.write_paused:
            up.pause()
        if self.paused & P_BUFFER:
            self._unpause(P_BUFFER)

    def upstream_failed(self, ex: Exchange, kind: str) -> None:
        if ex.state not in (CONNECTING, ACTIVE) or ex.pool is None:
            return
        ex.upstream = None
        self._unpause(P_UPSTREAM)
        if ex.head_sent:
            ex.pool.failed(ex, kind)  # counted; part of the response is out, so it cannot be replaced
            ex.state = DONE
            if self.transport is not None:
                self.transport.abort()
            return
        ex.out_written = 0
        if ex.pool.failed(ex, kind):
            return  # retried on another backend, or back at the head of the queue
        if kind == CONNECT_FAILED:
            self.respond_error(ex, 503, f"no backend of {ex.pool.key} accepted a connection "
                                        f"after {ex.attempts} attempt(s)")
        elif kind == TIMEOUT:
            self.respond_error(ex, 504, f"the backend did not answer within "
                                        f"{ex.pool.settings.server_timeout_s:g} s")
        elif kind == UNREACHABLE:
            self.respond_error(ex, 502, "the backend became unreachable (its health checks cannot connect) "
                                        "before it answered")
        else:
            self.respond_error(ex, 502, f"the backend connection failed ({kind}) before a response")

    # -- towards the client -------------------------------------------------------------------

    def response_head(self, ex: Exchange, status: int, up: UpstreamConnection) -> int:
        """Send the response head `up` has parsed (its bytes arrived at up.read_at); returns how
        the backend frames the body."""
        head, framing, ex.out_framing, ex.keep_alive = client_head(
            status, up.reason, up.fields, up.has_length, up.special, ex.is_head, ex.version11,
            ex.keep_alive and not self.fatal, ex.queue_wait_s * 1e3, (up.read_at - ex.dispatched_at) * 1e3)
        if ex.state == ACTIVE:
            ex.status = status
            ex.head_sent = True
            self.wbuf.append(head)
        return framing

    def response_body(self, ex: Exchange, data: bytes) -> None:
        if ex.state != ACTIVE:
            return
        if ex.out_framing == CHUNKED:
            self.wbuf += (chunk_size_line(len(data)), data, CRLF)
        else:
            self.wbuf.append(data)

    def flush(self) -> None:
        """Write what the responses produced: one write per backend read, not one per piece."""
        buf = self.wbuf
        if not buf:
            return
        self.wbuf = []
        t = self.transport
        if t is None or t.is_closing():
            return
        if len(buf) == 1:
            t.write(buf[0])
        elif len(buf) <= 8:
            t.write(b"".join(buf))
        else:
            t.writelines(buf)

    def _send(self, data: bytes) -> None:
        self.flush()
        if self.transport is not None:
            self.transport.write(data)

    def response_done(self, ex: Exchange, up: UpstreamConnection, reusable: bool, now: float = 0.0) -> None:
        """The backend's response is complete (`now`: when its last bytes arrived, if known)."""
        if ex.state != ACTIVE:
            up.release(False)
            return
        if ex.out_framing == CHUNKED:
            self.wbuf.append(LAST_CHUNK)
        self.flush()
        ex.upstream = None
        now = now or time.monotonic()
        up.release(reusable and ex.request_done, now)
        if self.paused & P_UPSTREAM:
            self._unpause(P_UPSTREAM)
        ex.state = DONE
        status = ex.status
        self.app.responses[status // 100] += 1  # app.count_response, inlined (llhttp: 3-digit statuses)
        assert ex.pool is not None
        ex.pool.release(ex, True, status, now)
        if ex.request_done:
            self._finish(ex, now)

    def respond_error(self, ex: Exchange, status: int, message: str) -> None:
        """Answer `ex` with a response generated here (queue full or timed out, no backend, ...)."""
        if ex.state in (DONE, CANCELLED) and ex.status:
            return
        ex.state = DONE
        ex.status = status
        self.app.count_response(status)
        if self.transport is None or self.closing:
            return
        if not ex.request_done:
            self._final(status, message)  # the rest of the body is not worth reading
            return
        keep = ex.keep_alive and self.fatal is None
        self._send(error_response(status, message, keep_alive=keep, version11=ex.version11,
                                  head_request=ex.is_head))
        if not keep:
            ex.keep_alive = False
        self._finish(ex)

    def _finish(self, ex: Exchange, now: float = 0.0) -> None:
        """`ex` is answered and fully read: next pipelined request, keep-alive wait, or close.

        Iterative: a pipelined request answered at once (queue full, no route) finishes inside
        _start, and thousands of those must not nest calls.
        """
        if ex is not self.current:
            return
        self.current = None
        if ex.keep_alive and not self._finishing and not self.pipeline and self.fatal is None and not self.eof:
            # The common case, as the loop below would handle it: wait for the next request.
            if self.paused & P_PIPELINE:
                self._unpause(P_PIPELINE)
            self.deadline = (now or time.monotonic()) + self.client_timeout_s
            return
        self._finished = ex
        if self._finishing:
            return  # the loop below, further up the stack, takes it from here
        self._finishing = True
        try:
            while (done := self._finished) is not None:
                self._finished = None
                if self.fatal is not None:
                    self._final(*self.fatal)
                elif not done.keep_alive or (self.eof and not self.pipeline):
                    self._linger()
                elif self.pipeline:
                    nxt = self.pipeline.popleft()
                    if not self.pipeline:
                        self._unpause(P_PIPELINE)
                    self.current = nxt
                    self._start(nxt)
                else:
                    self._unpause(P_PIPELINE)
                    self.deadline = time.monotonic() + self.client_timeout_s
        finally:
            self._finishing = False

    def fail(self, status: int, message: str) -> None:
        """The request being read is unacceptable: no further requests on this connection."""
        self.app.c[f"client_error_{status}"] += 1
        self.app.count_response(status)
        self._pause(P_STOP)
        ex, self.reader.parsing = self.reader.parsing, None
        cur = self.current
        if ex is not None and ex is not cur:
            self._cancel(ex)
        for queued in self.pipeline:
            self._cancel(queued)
        self.pipeline.clear()
        if cur is None:
            self._final(status, message)
        elif cur is ex or not cur.request_done:
            self._cancel(cur, client_gone=False)  # its request is broken: the backend gets no more of it
            if cur.head_sent:
                if self.transport is not None:
                    self.transport.abort()
                return
            self.current = None
            self._final(status, message)
        else:
            self.fatal = (status, message)  # after the response in progress

    def _final(self, status: int, message: str) -> None:
        """Write a last error response and close."""
        if self.transport is None or self.closing:
            return
        self._send(error_response(status, message))
        self._linger()

    def _linger(self) -> None:
        """Close gracefully: FIN now, discard whatever still arrives, close on EOF or after LINGER_S."""
        t = self.transport
        if t is None or self.closing:
            return
        self.flush()
        self.closing = True
        for ex in (self.reader.parsing, *self.pipeline):
            if ex is not None:
                self._cancel(ex)
        self.reader.parsing = None
        self.pipeline.clear()
        self.deadline = time.monotonic() + LINGER_S
        self.write_deadline = 0.0
        if not self.eof and t.can_write_eof():
            t.write_eof()
            self.paused = 0
            t.resume_reading()
        else:
            t.close()
