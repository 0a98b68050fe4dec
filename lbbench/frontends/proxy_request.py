"""Reading requests from a client: llhttp parsing, the limits, routing, and the head for the backend.

A RequestReader turns one client connection's bytes into Exchanges and hands them to its
ClientConnection (request_begins, request_head, request_body, request_complete). Anything
unacceptable ends in `conn.fail(status, message)`: malformed -> 400, head too large or too
many fields -> 431, body too large -> 413, upgrades and other codings -> 501, HTTP/2+ -> 505.

The head limit is enforced on raw bytes, not in the callbacks: llhttp (and httptools) gather
a header value before calling back, so a endless value would otherwise grow unseen.
"""

from __future__ import annotations

import sys
import traceback
from typing import TYPE_CHECKING

from httptools import HttpParserCallbackError, HttpParserError, HttpParserUpgrade, HttpRequestParser

from lbbench.frontends.proxy_exchange import WAITING, Exchange
from lbbench.frontends.proxy_http import (
    CHUNKED,
    CRLF,
    IDEMPOTENT,
    LENGTH,
    NO_BODY,
    chunk_size_line,
    scan_request,
    split_target,
    upstream_head,
)

if TYPE_CHECKING:
    from lbbench.frontends.proxy_client import ClientConnection


class Reject(Exception):
    """Raised inside a parser callback: answer `status` and close."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class Stop(Exception):
    """Raised inside a parser callback once the connection is closing: parse no further."""


class RequestReader:
    def __init__(self, conn: ClientConnection) -> None:
        self.conn = conn
        self.router = conn.app.router
        self.limits = conn.app.config.limits
        self.parser = HttpRequestParser(self)
        self.parsing: Exchange | None = None  # the request whose bytes are arriving
        self.in_head = True  # the next bytes belong to a request head
        self.head_bytes = 0
        self.heads_done = 0

    def feed(self, data: bytes) -> None:
        if self.in_head:
            limit = self.limits.max_header_bytes
            room = limit - self.head_bytes
            if len(data) > room:
                # Feed only what the head may still take: a head that does not end within it is too large.
                done = self.heads_done
                self.head_bytes = limit
                if not self._feed(data[:room]):
                    return
                if self.heads_done == done:
                    self.conn.fail(431, f"request head larger than {limit} bytes")
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
            self.conn.fail(501, "protocol upgrades (WebSocket, h2c) and CONNECT are not supported")
        except HttpParserCallbackError as e:
            cause = e.__context__
            if isinstance(cause, Reject):
                self.conn.fail(cause.status, cause.message)
            elif not isinstance(cause, Stop):
                traceback.print_exception(cause or e, file=sys.stderr)
                self.conn.fail(500, "internal error in the proxy")
        except HttpParserError as e:
            self.conn.fail(400, f"malformed request: {e}")
        return False

    # -- llhttp callbacks ---------------------------------------------------------------------

    # The connection may close from inside a callback (a final error response): the callbacks
    # that follow in the same feed then find no request and stop the parser.

    def on_message_begin(self) -> None:
        if self.conn.closing:
            raise Stop
        self.parsing = Exchange(self.conn)
        self.conn.request_begins()

    def on_url(self, url: bytes) -> None:
        if self.parsing is None:
            raise Stop
        self.parsing.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.parsing is None:
            raise Stop
        self.parsing.headers.append((name, value))  # counted at the end: the head's size bounds them

    def on_headers_complete(self) -> None:
        ex = self.parsing
        if ex is None:
            raise Stop
        self.in_head = False
        self.head_bytes = 0
        self.heads_done += 1
        limits = self.limits
        if len(ex.headers) > limits.max_headers:
            raise Reject(431, f"more than {limits.max_headers} header fields")
        p = self.parser
        version = p.get_http_version()
        if version not in ("1.1", "1.0"):
            raise Reject(505, f"HTTP/{version} is not supported (HTTP/1.0 and 1.1 are)")
        if p.should_upgrade():
            raise Reject(501, "protocol upgrades (WebSocket, h2c) and CONNECT are not supported")
        method = p.get_method()
        ex.method = method.decode("ascii", "replace")
        ex.version11 = version == "1.1"
        ex.keep_alive = p.should_keep_alive()
        ex.is_head = ex.method == "HEAD"
        ex.idempotent = ex.method in IDEMPOTENT
        rh = scan_request(ex.headers)
        if rh.bad_transfer_encoding:
            raise Reject(501, "transfer codings other than chunked are not supported")
        if rh.framing == LENGTH and not 0 <= rh.content_length <= limits.max_body_bytes:
            raise Reject(413, f"request body larger than {limits.max_body_bytes} bytes")
        ex.framing = rh.framing
        ex.expect_continue = rh.expect_continue
        authority, ex.target = split_target(ex.url)
        host = authority or rh.host
        ex.pool = self.router.route(host, ex.target)
        if ex.pool is None:
            ex.reject = (404, f"no Ingress rule for host {host.decode('latin-1')!r} and path "
                              f"{ex.target.split(b'?', 1)[0].decode('latin-1')!r}")
        else:
            head = upstream_head(method, ex.target, rh, client_ip=self.conn.peer,
                                 via_version=b"1.1" if ex.version11 else b"1.0",
                                 add_host=b"" if rh.host else authority or ex.pool.host)
            ex.out.append(head)
            ex.out_bytes = len(head)
        ex.headers = []
        ex.state = WAITING
        ex.request_done = ex.framing == NO_BODY  # complete already: an answer needs not wait for the end
        self.conn.request_head(ex)

    def on_body(self, data: bytes) -> None:
        ex = self.parsing
        if ex is None:
            raise Stop
        ex.body_bytes += len(data)
        if ex.body_bytes > self.limits.max_body_bytes:
            raise Reject(413, f"request body larger than {self.limits.max_body_bytes} bytes")
        self.conn.request_body(ex, chunk_size_line(len(data)) + data + CRLF if ex.framing == CHUNKED else data)

    def on_message_complete(self) -> None:
        ex = self.parsing
        if ex is None:
            raise Stop
        self.parsing = None
        self.in_head = True
        ex.request_done = True
        self.conn.request_complete(ex)

