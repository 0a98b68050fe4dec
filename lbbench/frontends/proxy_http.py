"""HTTP/1.1 message pieces for the L7 proxy: header filtering, heads, error responses.

Pure functions over bytes, no I/O. Headers are kept as the parser delivers them, a list of
(name, value) byte pairs, and rewritten in one pass per message.
"""

from __future__ import annotations

import http

CRLF = b"\r\n"
LAST_CHUNK = b"0\r\n\r\n"
CONTINUE_100 = b"HTTP/1.1 100 Continue\r\n\r\n"
VIA_TOKEN = b"lbbench"

# RFC 9110 7.6.1 plus the historical Keep-Alive and Proxy-Connection.
HOP_BY_HOP = frozenset({
    b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer", b"transfer-encoding",
    b"upgrade", b"proxy-authenticate", b"proxy-authorization",
})
# Methods whose repetition has the effect of one (RFC 9110 9.2.2): safe to retry after a reset.
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})

_REASONS = {s.value: s.phrase.encode() for s in http.HTTPStatus}

# How the proxy frames a body it forwards.
NO_BODY, LENGTH, CHUNKED, UNTIL_CLOSE = 0, 1, 2, 3

Headers = list[tuple[bytes, bytes]]


# What the proxy does with a header field, by lower-cased name; fields not listed pass through.
_DROP, _HOST, _LENGTH, _TE, _CONNECTION, _EXPECT, _XFF, _VIA = range(1, 9)
_HOP = {name: _DROP for name in HOP_BY_HOP}
_REQUEST_ROLE = {**_HOP, b"host": _HOST, b"content-length": _LENGTH, b"transfer-encoding": _TE,
                 b"connection": _CONNECTION, b"expect": _EXPECT, b"x-forwarded-for": _XFF, b"via": _VIA}
_RESPONSE_ROLE = {**_HOP, b"content-length": _LENGTH, b"transfer-encoding": _TE, b"connection": _CONNECTION,
                  b"via": _VIA}


def reason(status: int) -> bytes:
    return _REASONS.get(status, b"Unknown")


def _declared_hop_by_hop(value: bytes) -> set[bytes]:
    """Header names a Connection field declares hop-by-hop, besides the usual ones."""
    return {t.strip().lower() for t in value.split(b",")} - {b"close", b"keep-alive", b""}


class RequestHead:
    """A request's header fields, scanned once: what the proxy needs, and the fields to forward."""

    __slots__ = ("bad_transfer_encoding", "content_length", "expect_continue", "fields", "framing", "host",
                 "via", "xff")

    def __init__(self) -> None:
        self.host = b""
        self.framing = NO_BODY  # NO_BODY, LENGTH or CHUNKED
        self.content_length = 0
        self.expect_continue = False
        self.bad_transfer_encoding = False  # a transfer coding other than plain "chunked"
        self.fields: list[bytes] = []  # forwarded fields, as pieces of "Name: value\r\n"
        self.xff = b""
        self.via = b""


def scan_request(headers: Headers, drop: frozenset[bytes] = frozenset()) -> RequestHead:
    """One pass over the fields: hop-by-hop gone, X-Forwarded-For and Via kept aside to be extended."""
    rh = RequestHead()
    fields = rh.fields
    declared: set[bytes] = set()
    for name, value in headers:
        low = name.lower()
        role = _REQUEST_ROLE.get(low)
        if role is None:
            if not drop or low not in drop:
                fields += (name, b": ", value, CRLF)
        elif role == _HOST:
            rh.host = value
            fields += (name, b": ", value, CRLF)
        elif role == _LENGTH:  # llhttp has rejected duplicates that differ and Content-Length with chunked
            rh.framing = LENGTH
            rh.content_length = int(value) if value.isdigit() else -1
            fields += (name, b": ", value, CRLF)
        elif role == _TE:
            if value.strip().lower() == b"chunked":
                rh.framing = CHUNKED
            else:
                rh.bad_transfer_encoding = True
        elif role == _CONNECTION:
            declared |= _declared_hop_by_hop(value)
        elif role == _EXPECT:
            rh.expect_continue = value.strip().lower() == b"100-continue"
        elif role == _XFF:
            rh.xff = rh.xff + b", " + value if rh.xff else value
        elif role == _VIA:
            rh.via = rh.via + b", " + value if rh.via else value
    if declared and not drop:
        return scan_request(headers, frozenset(declared))  # rare: a second pass without the declared fields
    return rh


def split_target(url: bytes) -> tuple[bytes, bytes]:
    """(authority, origin-form target) of a request target; absolute-form loses its authority."""
    if url[:7].lower() == b"http://":
        rest = url[7:]
        slash = rest.find(b"/")
        if slash < 0:
            return rest, b"/"
        return rest[:slash], rest[slash:]
    return b"", url


def upstream_head(method: bytes, target: bytes, rh: RequestHead, *, client_ip: bytes, via_version: bytes,
                  add_host: bytes = b"") -> bytes:
    """The request head sent to a backend: HTTP/1.1, X-Forwarded-For and Via extended.

    `add_host`: a Host field for requests without one (HTTP/1.0), which HTTP/1.1 requires.
    """
    return b"".join((
        method, b" ", target, b" HTTP/1.1\r\n", b"Host: " + add_host + CRLF if add_host else b"", *rh.fields,
        b"X-Forwarded-For: ", rh.xff + b", " + client_ip if rh.xff else client_ip,
        b"\r\nVia: ", rh.via + b", " if rh.via else b"", via_version, b" ", VIA_TOKEN, CRLF,
        b"Transfer-Encoding: chunked\r\n\r\n" if rh.framing == CHUNKED else CRLF,
    ))


_status_lines: dict[tuple[bool, int, bytes], bytes] = {}


def _status_line(version11: bool, status: int, reason_phrase: bytes) -> bytes:
    key = (version11, status, reason_phrase)
    line = _status_lines.get(key)
    if line is None:
        line = b"%s %d %s\r\n" % (b"HTTP/1.1" if version11 else b"HTTP/1.0", status,
                                   reason_phrase or reason(status))
        if len(_status_lines) < 1024:  # reason phrases come from backends: bounded
            _status_lines[key] = line
    return line


def client_head(status: int, reason_phrase: bytes, headers: Headers, *, head_request: bool, version11: bool,
                keep_alive: bool, queue_ms: float, drop: frozenset[bytes] = frozenset(),
                ) -> tuple[bytes, int, int, bool]:
    """The response head for the client, in one pass over the backend's fields.

    Returns (head, framing of the backend's body, framing of the client's body, keep-alive).
    Chunked and close-delimited backend bodies are sent chunked to HTTP/1.1 clients, so that
    their connection can be kept; HTTP/1.0 clients get them close-delimited.
    """
    fields: list[bytes] = []
    framing = UNTIL_CLOSE
    via = b""
    declared: set[bytes] = set()
    for name, value in headers:
        low = name.lower()
        role = _RESPONSE_ROLE.get(low)
        if role is None:
            if not drop or low not in drop:
                fields += (name, b": ", value, CRLF)
        elif role == _LENGTH:
            if framing != CHUNKED:
                framing = LENGTH
            fields += (name, b": ", value, CRLF)
        elif role == _TE:
            if value.strip().lower().endswith(b"chunked"):
                framing = CHUNKED
        elif role == _CONNECTION:
            declared |= _declared_hop_by_hop(value)
        elif role == _VIA:
            via = via + b", " + value if via else value
    if declared and not drop:
        return client_head(status, reason_phrase, headers, head_request=head_request, version11=version11,
                           keep_alive=keep_alive, queue_ms=queue_ms, drop=frozenset(declared))
    if head_request or status in (204, 304) or status < 200:
        framing = NO_BODY
    out_framing = framing
    if framing in (CHUNKED, UNTIL_CLOSE):
        if version11:
            out_framing = CHUNKED
        else:
            out_framing, keep_alive = UNTIL_CLOSE, False
    head = b"".join((
        _status_line(version11, status, reason_phrase), *fields,
        b"Via: ", via + b", " if via else b"", b"1.1 ", VIA_TOKEN,
        b"\r\nX-Proxy-Queue-Ms: %.3f\r\n" % queue_ms,
        b"Transfer-Encoding: chunked\r\n" if out_framing == CHUNKED else b"",
        b"" if keep_alive and version11 else b"Connection: keep-alive\r\n" if keep_alive else
        b"Connection: close\r\n",
        CRLF,
    ))
    return head, framing, out_framing, keep_alive


def error_response(status: int, message: str, *, keep_alive: bool = False, version11: bool = True,
                   head_request: bool = False) -> bytes:
    """A complete response generated by the proxy itself, with a one-line plain-text body."""
    body = f"{status} {reason(status).decode()}: {message}\n".encode()
    conn = b"" if keep_alive and version11 else (b"Connection: keep-alive\r\n" if keep_alive else
                                                 b"Connection: close\r\n")
    head = b"".join((
        b"HTTP/1.1 " if version11 else b"HTTP/1.0 ", str(status).encode(), b" ", reason(status), CRLF,
        b"Content-Type: text/plain; charset=utf-8\r\nContent-Length: ", str(len(body)).encode(), CRLF,
        b"Cache-Control: no-store\r\n", conn, b"Via: 1.1 ", VIA_TOKEN, CRLF, CRLF,
    ))
    return head if head_request else head + body


def chunk_size_line(n: int) -> bytes:
    return b"%x\r\n" % n
