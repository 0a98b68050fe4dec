"""The client side of the proxy: one asyncio.Protocol per client connection.

Requests are parsed with llhttp (httptools.HttpRequestParser), routed to a Service's pool
and streamed to the backend; responses are streamed back in order. One request is served at
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
import sys
import time
import traceback
from typing import TYPE_CHECKING, cast

from httptools import HttpParserCallbackError, HttpParserError, HttpParserUpgrade, HttpRequestParser

from lbbench.frontends.proxy_backend import CONNECT_FAILED, TIMEOUT
from lbbench.frontends.proxy_exchange import (
    ACTIVE,
    CANCELLED,
    CONNECTING,
    DONE,
    QUEUED,
    RETRY_BUFFER,
    WAITING,
    Exchange,
)
from lbbench.frontends.proxy_http import (
    CHUNKED,
    CONTINUE_100,
    CRLF,
    IDEMPOTENT,
    LAST_CHUNK,
    LENGTH,
    NO_BODY,
    UNTIL_CLOSE,
    Headers,
    chunk_size_line,
    client_head,
    error_response,
    request_info,
    split_target,
    upstream_head,
)

if TYPE_CHECKING:
    from lbbench.frontends.proxy_app import ProxyApp
    from lbbench.frontends.proxy_upstream import UpstreamConnection

LINGER_S = 2.0
# Why reading is paused (a bit each; reading resumes when none is left).
P_UPSTREAM, P_BUFFER, P_PIPELINE, P_STOP = 1, 2, 4, 8


class Reject(Exception):
    """Raised inside a parser callback: answer `status` and close."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class ClientConnection(asyncio.Protocol):
    def __init__(self, app: ProxyApp) -> None:
        self.app = app
        self.limits = app.config.limits
        self.client_timeout_s = app.config.settings.client_timeout_s
        self.transport: asyncio.Transport | None = None
        self.parser = HttpRequestParser(self)
        self.parsing: Exchange | None = None  # the request whose bytes are arriving
        self.current: Exchange | None = None  # the request whose response owns the connection
        self.pipeline: collections.deque[Exchange] = collections.deque()
        self.paused = 0
        self.write_paused = False
        self.deadline = 0.0  # reading (idle, head, body) or lingering
        self.write_deadline = 0.0  # the client does not read our response
        self.in_head = True
        self.head_bytes = 0
        self.heads_done = 0
        self.closing = False
        self.eof = False
        self.fatal: tuple[int, str] | None = None
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
        for ex in (self.current, self.parsing, *self.pipeline):
            if ex is not None:
                self._cancel(ex)
        self.current = self.parsing = None
        self.pipeline.clear()

    def eof_received(self) -> bool:
        if self.parsing is not None or self.current is None or self.closing:
            return False  # an unfinished request can never finish; nothing owed otherwise
        self.eof = True  # half-close after a complete request: answer, then close
        return True

    def _cancel(self, ex: Exchange) -> None:
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
        if QUEUED <= state <= ACTIVE:
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
        elif self.parsing is not None or (self.current is not None and not self.current.request_done):
            self.app.c["client_timeouts"] += 1
            if self.current is not None and self.current.head_sent:
                t.abort()
            else:
                self._fail(408, f"request not received within client_timeout {self.client_timeout_s:g} s")
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

    # -- request parsing ----------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return  # lingering: discard
        if self.in_head:
            room = self.limits.max_header_bytes - self.head_bytes
            if len(data) > room:
                # Feed only what the head may still take: a head that does not end within it is too large.
                done = self.heads_done
                self.head_bytes = self.limits.max_header_bytes
                if not self._feed(data[:room]):
                    return
                if self.heads_done == done:
                    self._fail(431, f"request head larger than {self.limits.max_header_bytes} bytes")
                    return
                data = data[room:]
            else:
                self.head_bytes += len(data)
        if data:
            self._feed(data)

    def _feed(self, data: bytes) -> bool:
        try:
            self.parser.feed_data(data)
            return True
        except HttpParserUpgrade:
            self._fail(501, "protocol upgrades (WebSocket, h2c) and CONNECT are not supported")
        except HttpParserCallbackError as e:
            cause = e.__context__
            if isinstance(cause, Reject):
                self._fail(cause.status, cause.message)
            else:
                traceback.print_exception(cause or e, file=sys.stderr)
                self._fail(500, "internal error in the proxy")
        except HttpParserError as e:
            self._fail(400, f"malformed request: {e}")
        return False

    def on_message_begin(self) -> None:
        self.parsing = Exchange(self)
        if self.current is not None:
            self._pause(P_PIPELINE)  # a pipelined request: read no further until its turn

    def on_url(self, url: bytes) -> None:
        assert self.parsing is not None
        self.parsing.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        assert self.parsing is not None
        headers = self.parsing.headers
        if len(headers) >= self.limits.max_headers:
            raise Reject(431, f"more than {self.limits.max_headers} header fields")
        headers.append((name, value))

    def on_headers_complete(self) -> None:
        ex = self.parsing
        assert ex is not None
        self.in_head = False
        self.head_bytes = 0
        self.heads_done += 1
        p = self.parser
        version = p.get_http_version()
        if version not in ("1.1", "1.0"):
            raise Reject(505, f"HTTP/{version} is not supported (HTTP/1.0 and 1.1 are)")
        if p.should_upgrade():
            raise Reject(501, "protocol upgrades (WebSocket, h2c) and CONNECT are not supported")
        ex.method = p.get_method().decode("ascii", "replace")
        ex.version11 = version == "1.1"
        ex.keep_alive = p.should_keep_alive()
        ex.is_head = ex.method == "HEAD"
        ex.idempotent = ex.method in IDEMPOTENT
        info = request_info(ex.headers)
        if info.bad_transfer_encoding:
            raise Reject(501, "transfer codings other than chunked are not supported")
        if info.framing == LENGTH and not 0 <= info.content_length <= self.limits.max_body_bytes:
            raise Reject(413, f"request body larger than {self.limits.max_body_bytes} bytes")
        ex.framing = info.framing
        ex.expect_continue = info.expect_continue
        authority, ex.target = split_target(ex.url)
        host = authority or info.host
        ex.pool = self.app.router.route(host, ex.target)
        if ex.pool is None:
            ex.reject = (404, f"no Ingress rule for host {host.decode('latin-1')!r} and path "
                              f"{ex.target.split(b'?', 1)[0].decode('latin-1')!r}")
        else:
            head = upstream_head(p.get_method(), ex.target, ex.headers, client_ip=self.peer,
                                 via_version=b"1.1" if ex.version11 else b"1.0", framing=ex.framing,
                                 add_host=b"" if info.host else authority or ex.pool.host)
            ex.out.append(head)
            ex.out_bytes = len(head)
        ex.headers = []
        ex.state = WAITING
        self.deadline = time.monotonic() + self.client_timeout_s if ex.framing != NO_BODY else 0.0
        if self.current is None:
            self.current = ex
            self._start(ex)
        else:
            self.pipeline.append(ex)

    def on_body(self, data: bytes) -> None:
        ex = self.parsing
        assert ex is not None
        ex.body_bytes += len(data)
        if ex.body_bytes > self.limits.max_body_bytes:
            raise Reject(413, f"request body larger than {self.limits.max_body_bytes} bytes")
        self.deadline = time.monotonic() + self.client_timeout_s
        if ex.reject is not None or ex.state >= DONE:
            return  # discarded: an answer was or will be generated
        if ex.framing == CHUNKED:
            self._to_upstream(ex, chunk_size_line(len(data)) + data + CRLF)
        else:
            self._to_upstream(ex, data)

    def on_message_complete(self) -> None:
        ex = self.parsing
        assert ex is not None
        self.parsing = None
        self.in_head = True
        ex.request_done = True
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
        self.app.c["client_requests"] += 1
        if ex.reject is not None:
            if ex.request_done:
                self.respond_error(ex, *ex.reject)
            return
        if ex.framing == CHUNKED and ex.request_done:
            self._to_upstream(ex, LAST_CHUNK)  # pipelined chunked request, complete before its turn
        if ex.expect_continue and not ex.request_done and self.transport is not None:
            self.transport.write(CONTINUE_100)
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
            if ex.out_bytes > RETRY_BUFFER and ex is self.parsing:
                self._pause(P_BUFFER)

    def attached(self, ex: Exchange, up: UpstreamConnection) -> None:
        """A backend connection is ready for `ex`: write what the request has so far."""
        ex.upstream = up
        ex.state = ACTIVE
        assert up.transport is not None
        up.transport.writelines(ex.out[ex.out_written:] if ex.out_written else ex.out)
        if ex.replayable and ex.out_bytes <= RETRY_BUFFER:
            ex.out_written = len(ex.out)
        else:
            ex.replayable = False
            ex.out = []
            ex.out_written = ex.out_bytes = 0
        if self.write_paused:
            up.pause()
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
        else:
            self.respond_error(ex, 502, f"the backend connection failed ({kind}) before a response")

    # -- towards the client -------------------------------------------------------------------

    def response_head(self, ex: Exchange, status: int, reason: bytes, headers: Headers, framing: int) -> None:
        if ex.state != ACTIVE or self.transport is None:
            return
        head, ex.out_framing = client_head(
            status, reason, headers, version11=ex.version11, keep_alive=ex.keep_alive and not self.fatal,
            framing=framing, queue_ms=ex.queue_wait_s * 1e3)
        if ex.out_framing == UNTIL_CLOSE:
            ex.keep_alive = False
        ex.status = status
        ex.head_sent = True
        self.transport.write(head)

    def response_body(self, ex: Exchange, data: bytes) -> None:
        if ex.state != ACTIVE or self.transport is None:
            return
        if ex.out_framing == CHUNKED:
            self.transport.writelines((chunk_size_line(len(data)), data, CRLF))
        else:
            self.transport.write(data)

    def response_done(self, ex: Exchange, up: UpstreamConnection, reusable: bool) -> None:
        if ex.state != ACTIVE:
            up.release(False)
            return
        if ex.out_framing == CHUNKED and self.transport is not None:
            self.transport.write(LAST_CHUNK)
        ex.upstream = None
        up.release(reusable and ex.request_done)
        self._unpause(P_UPSTREAM)
        ex.state = DONE
        self.app.count_response(ex.status)
        assert ex.pool is not None
        ex.pool.release(ex, ok=True, status=ex.status)
        if ex.request_done:
            self._finish(ex)

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
        self.transport.write(error_response(status, message, keep_alive=keep, version11=ex.version11,
                                            head_request=ex.is_head))
        if not keep:
            ex.keep_alive = False
        self._finish(ex)

    def _finish(self, ex: Exchange) -> None:
        """`ex` is answered and fully read: next pipelined request, keep-alive wait, or close."""
        if ex is not self.current:
            return
        self.current = None
        if self.fatal is not None:
            self._final(*self.fatal)
        elif not ex.keep_alive or (self.eof and not self.pipeline):
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

    def _fail(self, status: int, message: str) -> None:
        """The request being read is unacceptable: no further requests on this connection."""
        self.app.c[f"client_error_{status}"] += 1
        self.app.count_response(status)
        self._pause(P_STOP)
        ex, self.parsing = self.parsing, None
        cur = self.current
        if ex is not None and ex is not cur:
            self._cancel(ex)
        for queued in self.pipeline:
            self._cancel(queued)
        self.pipeline.clear()
        if cur is None:
            self._final(status, message)
        elif cur is ex or not cur.request_done:
            if cur.head_sent:
                self._cancel(cur)
                if self.transport is not None:
                    self.transport.abort()
                return
            self._cancel(cur)
            self.current = None
            self._final(status, message)
        else:
            self.fatal = (status, message)  # after the response in progress

    def _final(self, status: int, message: str) -> None:
        """Write a last error response and close."""
        if self.transport is None or self.closing:
            return
        self.transport.write(error_response(status, message))
        self._linger()

    def _linger(self) -> None:
        """Close gracefully: FIN now, discard whatever still arrives, close on EOF or after LINGER_S."""
        t = self.transport
        if t is None or self.closing:
            return
        self.closing = True
        for ex in (self.parsing, *self.pipeline):
            if ex is not None:
                self._cancel(ex)
        self.parsing = None
        self.pipeline.clear()
        self.deadline = time.monotonic() + LINGER_S
        self.write_deadline = 0.0
        if not self.eof and t.can_write_eof():
            t.write_eof()
            self.paused = 0
            t.resume_reading()
        else:
            t.close()
