"""Reading requests from a client: llhttp parsing, the limits, routing, and the head for the backend.

A RequestReader turns one client connection's bytes into Exchanges and hands them to its
ClientConnection (request_begins, request_head, request_body, request_complete). Anything
unacceptable ends in `conn.fail(status, message)`: malformed -> 400, head too large or too
many fields -> 431, body too large -> 413, upgrades and other codings -> 501, HTTP/2+ -> 505.

Malformed includes what RFC 9112 calls so (section 3.2, 6.1) and HAProxy refuses: an HTTP/1.1
request without Host, with two Host fields or an invalid one, an absolute-form target whose
authority is not the Host, Transfer-Encoding in HTTP/1.0, and an HTTP/0.9 request line (no
version), refused as soon as its line ends rather than after the client timeout.

The head limit is enforced on raw bytes, not in the callbacks: llhttp (and httptools) gather
a header value before calling back, so a endless value would otherwise grow unseen.
"""

from __future__ import annotations

import re
import sys
import traceback
from collections.abc import Callable
from typing import TYPE_CHECKING

from httptools import HttpParserCallbackError, HttpParserError, HttpParserUpgrade, HttpRequestParser

from lbbench.frontends.proxy.exchange import WAITING, Exchange, new_exchange
from lbbench.frontends.proxy.http import (
    CHUNKED,
    CRLF,
    HOST,
    IDEMPOTENT,
    LENGTH,
    LENGTH_FIELD,
    NO_BODY,
    PASS,
    PLAIN_REQUEST,
    REQUEST_SLOTS,
    UNKNOWN,
    Fields,
    Special,
    chunk_size_line,
    forwarding_tail,
    known_request_role,
    request_role,
    scan_request,
    split_target,
    upstream_head,
)
from lbbench.system.compiled import proxy_heads

if TYPE_CHECKING:
    from lbbench.frontends.proxy.client import ClientConnection
    from lbbench.frontends.proxy.queue import ServicePool

_HEADS = proxy_heads()
# (method, target, host, request line + forwarded fields, field count, keep-alive) of a whole plain request, else None
ScanRequest = Callable[[bytes], "tuple[bytes, bytes, bytes, bytes, int, bool] | None"]
SCAN_REQUEST: ScanRequest | None = _HEADS.request if _HEADS is not None else None


class Reject(Exception):
    """Raised inside a parser callback: answer `status` and close."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class Stop(Exception):
    """Raised inside a parser callback once the connection is closing: parse no further."""


# RFC 9112 3.2 / RFC 3986 3.2.2: uri-host [ ":" port ], uri-host an IP-literal or a reg-name (empty allowed).
_HOST = re.compile(rb"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-._~%!$&'()*+,;=]*)(:[0-9]*)?")
_valid_hosts: set[bytes] = set()  # Host values found valid (bounded: clients choose them)
_HOSTS_MAX = 4096


def _check_host(value: bytes) -> None:
    if _HOST.fullmatch(value.strip(b" \t")) is None:  # llhttp keeps trailing whitespace
        raise Reject(400, f"invalid Host {value.decode('latin-1')!r}")
    if len(_valid_hosts) >= _HOSTS_MAX:
        _valid_hosts.clear()
    _valid_hosts.add(value)


def _same_authority(authority: bytes, host: bytes) -> bool:
    """Whether an absolute-form target's authority names the Host (case aside, port 80 implied)."""
    a, h = authority.lower(), host.lower()
    return a == h or a.removesuffix(b":80") == h.removesuffix(b":80")


_methods: dict[bytes, tuple[str, bool, bool]] = {}  # llhttp's method name -> (name, is HEAD, idempotent)


def _method(raw: bytes) -> tuple[str, bool, bool]:
    info = _methods.get(raw)
    if info is None:  # llhttp knows a fixed set of methods: bounded
        name = raw.decode("ascii", "replace")
        info = _methods[raw] = (name, name == "HEAD", name in IDEMPOTENT)
    return info


def _request_line() -> Fields:
    """A new request's field list: the slots of its request line (method, target), then its fields."""
    return [b"", b" ", b"", b" HTTP/1.1\r\n"]


class RequestReader:
    def __init__(self, conn: ClientConnection) -> None:
        self.conn = conn
        self.router = conn.app.router
        self.limits = conn.app.config.limits
        self.max_head = self.limits.max_header_bytes
        self.parser = HttpRequestParser(self)
        self.parsing: Exchange | None = None  # the request whose bytes are arriving
        # The head being parsed: target, forwarded fields (after the request line's slots), Host,
        # fields that need a decision.
        self.url = b""
        self.fields: Fields = _request_line()
        self.host: bytes | None = None  # None: no Host field (yet)
        self.special: Special = ()
        self.in_head = True  # the next bytes belong to a request head
        self.head_bytes = 0
        self.heads_done = 0
        self.tails: dict[bytes, bytes] = {}  # via version -> X-Forwarded-For and Via for this client
        # The C scan of one whole plain request (lbbench/frontends/proxy/_heads.c), None without it:
        # what it declines, and every byte while a request is under way, goes to llhttp.
        self.scan = SCAN_REQUEST

    def feed(self, data: bytes) -> None:
        if self.conn.closing:
            return  # lingering: discard
        if self.in_head:
            if self.scan is not None and self.parsing is None and not self.head_bytes and len(data) <= self.max_head:
                found = self.scan(data)
                if found is not None:
                    self._plain(*found)
                    return
            room = self.max_head - self.head_bytes
            if len(data) > room:
                # Feed only what the head may still take: a head that does not end within it is too large.
                done = self.heads_done
                self.head_bytes = self.max_head
                if not self._feed(data[:room]):
                    return
                if self.heads_done == done:
                    self.conn.fail(431, f"request head larger than {self.max_head} bytes")
                    return
                data = data[room:]
                if not data:
                    return
            else:
                self.head_bytes += len(data)
        try:
            self.parser.feed_data(data)
        except (HttpParserError, HttpParserUpgrade) as e:
            self._failed(e)
            return
        if self.parsing is not None and self.in_head and not self.heads_done and data[-1:] == b"\n":
            self._http09()

    def _http09(self) -> None:
        """Refuse a first request line that ended without a version at once: an HTTP/0.9 client
        waits for an answer, while llhttp waits for header fields (until the client timeout).

        llhttp notes the version while it reads the request line; a line break before any
        version is the end of an HTTP/0.9 line. (On later requests of a connection the previous
        version is still noted, so this catches only the first; HTTP/0.9 has no keep-alive.)
        """
        if self.parser.get_http_version() == "0.0":
            self.conn.fail(400, "HTTP/0.9 request (no HTTP version in the request line)")

    def _feed(self, data: bytes) -> bool:
        try:
            self.parser.feed_data(data)
            return True
        except (HttpParserError, HttpParserUpgrade) as e:
            self._failed(e)
        return False

    def _failed(self, e: Exception) -> None:
        if isinstance(e, HttpParserUpgrade):
            self.conn.fail(501, "protocol upgrades (WebSocket, h2c) and CONNECT are not supported")
        elif isinstance(e, HttpParserCallbackError):
            self._refused(e.__context__ or e)
        else:
            self.conn.fail(400, f"malformed request: {e}")

    def _refused(self, cause: BaseException) -> None:
        """What a callback (or the scan's path) raised: a refusal, a stop, or a bug (500)."""
        if isinstance(cause, Reject):
            self.conn.fail(cause.status, cause.message)
        elif not isinstance(cause, Stop):
            traceback.print_exception(cause, file=sys.stderr)
            self.conn.fail(500, "internal error in the proxy")

    def _plain(self, method: bytes, target: bytes, host: bytes, head: bytes, count: int, keep_alive: bool) -> None:
        """A whole plain request the C scan read: what llhttp's callbacks would do with it, in their order.

        `head` is its request line and forwarded fields, as the backend gets them before our tail.
        """
        try:
            self.on_message_begin()
            ex = self.parsing
            assert ex is not None
            if host not in _valid_hosts:
                _check_host(host)
            self.in_head = False
            self.heads_done += 1
            if count > self.limits.max_headers:
                raise Reject(431, f"more than {self.limits.max_headers} header fields")
            ex.keep_alive = keep_alive  # version11 is the Exchange's default
            if method != b"GET":  # a GET's method, is_head and idempotent are the Exchange's defaults
                ex.method, ex.is_head, ex.idempotent = _methods.get(method) or _method(method)
            ex.target = target
            pool = self._route(ex, host, target)
            if pool is not None:
                head += self.tails.get(b"1.1") or self._tail(b"1.1")
                ex.out.append(head)
                ex.out_bytes = len(head)
            self._submit(ex, NO_BODY)
        except Exception as e:
            self._refused(e)
            return
        if self.parsing is not None:
            self.on_message_complete()

    def _route(self, ex: Exchange, host: bytes, target: bytes) -> ServicePool | None:
        ex.pool = pool = self.router.route(host, target)
        if pool is None:
            ex.reject = (404, f"no Ingress rule for host {host.decode('latin-1')!r} and path "
                              f"{target.split(b'?', 1)[0].decode('latin-1')!r}")
        return pool

    def _tail(self, via_version: bytes) -> bytes:
        """X-Forwarded-For and Via for this client (the end of the common request head)."""
        tail = self.tails.get(via_version)
        if tail is None:
            tail = self.tails[via_version] = forwarding_tail(self.conn.peer, via_version)
        return tail

    def _submit(self, ex: Exchange, framing: int) -> None:
        """The head is read: hand the request to the connection."""
        ex.state = WAITING
        ex.request_done = framing == NO_BODY  # complete already: an answer needs not wait for the end
        self.conn.request_head(ex)

    # -- llhttp callbacks ---------------------------------------------------------------------

    # The connection may close from inside a callback (a final error response): the callbacks
    # that follow in the same feed then find no request and stop the parser.

    def on_message_begin(self) -> None:
        conn = self.conn
        if conn.closing:
            raise Stop
        self.parsing = new_exchange(conn)
        if conn.current is not None:
            conn.request_begins()

    def on_url(self, url: bytes) -> None:
        if self.parsing is None:
            raise Stop
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.parsing is None:
            raise Stop
        # Counted at the end: the head's size bounds them.
        role = known_request_role(name, UNKNOWN)
        if role == PASS:
            self.fields += (name, b": ", value, CRLF)
        elif role == HOST:
            if self.host is not None:
                raise Reject(400, "more than one Host header field")
            if value not in _valid_hosts:  # the common case inline: a Host seen before
                _check_host(value)
            self.fields += (name, b": ", value, CRLF)
            self.host = value
        else:
            self._special(role, name, value)

    def _special(self, role: int, name: bytes, value: bytes) -> None:
        if role == UNKNOWN:
            request_role(name)  # remembered from now on
            self.on_header(name, value)
            return
        if role == LENGTH_FIELD:
            self.fields += (name, b": ", value, CRLF)
        self.special += ((role, name, value),)

    def on_headers_complete(self) -> None:
        ex = self.parsing
        if ex is None:
            raise Stop
        self.in_head = False
        self.head_bytes = 0
        self.heads_done += 1
        url = self.url
        fields = self.fields
        host_field = self.host
        special = self.special
        self.url = b""
        self.fields = _request_line()
        self.host = None
        self.special = ()
        limits = self.limits
        count = (len(fields) - REQUEST_SLOTS) >> 2  # forwarded fields are 4 pieces each
        if special:
            count += sum(role != LENGTH_FIELD for role, _, _ in special)  # Content-Length is also forwarded
        if count > limits.max_headers:
            raise Reject(431, f"more than {limits.max_headers} header fields")
        p = self.parser
        ex.keep_alive = keep_alive = p.should_keep_alive()
        if keep_alive and not special:
            # Without a Connection field llhttp keeps HTTP/1.1 requests alive and no others (the
            # versions it accepts are 0.9, 1.0, 1.1, 2.0 and 3.0): no need to format the version.
            version11 = True
        else:
            version = p.get_http_version()
            if version != "1.1" and version != "1.0":
                if version == "0.9":
                    raise Reject(400, "HTTP/0.9 request (no HTTP version in the request line)")
                raise Reject(505, f"HTTP/{version} is not supported (HTTP/1.0 and 1.1 are)")
            version11 = version == "1.1"
        ex.version11 = version11
        if p.should_upgrade():
            raise Reject(501, "protocol upgrades (WebSocket, h2c) and CONNECT are not supported")
        method = p.get_method()
        ex.method, ex.is_head, ex.idempotent = _methods.get(method) or _method(method)
        if special:
            rh = scan_request(special)
            if rh.bad_transfer_encoding:
                raise Reject(501, "transfer codings other than chunked are not supported")
            framing = rh.framing
            if framing == CHUNKED and not version11:
                raise Reject(400, "Transfer-Encoding in an HTTP/1.0 request (RFC 9112 6.1: faulty framing)")
            if framing == LENGTH and not 0 <= rh.content_length <= limits.max_body_bytes:
                raise Reject(413, f"request body larger than {limits.max_body_bytes} bytes")
            ex.framing = framing
            ex.expect_continue = rh.expect_continue
        else:
            rh = PLAIN_REQUEST
            framing = NO_BODY  # what the Exchange starts with, as expect_continue's False
        if url[:1] == b"/":
            authority = b""
            ex.target = target = url
        else:
            authority, target = split_target(url)
            ex.target = target
        if host_field is None:
            if version11:
                raise Reject(400, "HTTP/1.1 request without a Host header field")
        elif authority and not _same_authority(authority, host_field):
            raise Reject(400, f"the target's authority {authority.decode('latin-1')!r} is not the Host "
                              f"{host_field.decode('latin-1')!r}")
        host = authority or host_field or b""
        pool = self._route(ex, host, target)
        if pool is not None:
            via_version = b"1.1" if version11 else b"1.0"
            tail = self._tail(via_version)
            if rh is PLAIN_REQUEST and host_field is not None:
                # upstream_head's common case, inlined: the request line, the fields as they came, our tail
                fields[0] = method
                fields[2] = target
                fields.append(tail)
                head = b"".join(fields)
            else:
                head = upstream_head(method, target, fields, rh, self.conn.peer, via_version,
                                     b"" if host_field is not None else authority or pool.host, tail)
            ex.out.append(head)
            ex.out_bytes = len(head)
        self._submit(ex, framing)

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
