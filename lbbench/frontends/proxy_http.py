"""HTTP/1.1 message pieces for the L7 proxy: header filtering, heads, error responses.

Pure functions over bytes, no I/O. Headers are kept as the parser delivers them, a list of
(name, value) byte pairs, and rewritten in one pass per message.
"""

from __future__ import annotations

import http
from dataclasses import dataclass

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


@dataclass(frozen=True)
class RequestInfo:
    """What the proxy needs from a request's headers, found in one pass."""

    host: bytes
    framing: int  # NO_BODY, LENGTH or CHUNKED
    content_length: int
    expect_continue: bool
    bad_transfer_encoding: bool  # a transfer coding other than plain "chunked"


def reason(status: int) -> bytes:
    return _REASONS.get(status, b"Unknown")


def _connection_tokens(headers: Headers) -> frozenset[bytes]:
    """Header names listed in Connection (hop-by-hop by declaration), besides the usual ones."""
    tokens: set[bytes] = set()
    for name, value in headers:
        if len(name) == 10 and name.lower() == b"connection":
            tokens.update(t.strip().lower() for t in value.split(b","))
    tokens.discard(b"close")
    tokens.discard(b"keep-alive")
    return frozenset(tokens)


def request_info(headers: Headers) -> RequestInfo:
    host = b""
    framing = NO_BODY
    length = 0
    expect = False
    bad_te = False
    for name, value in headers:
        low = name.lower()
        if low == b"host":
            host = value
        elif low == b"content-length":
            framing = LENGTH if framing != CHUNKED else CHUNKED
            length = int(value) if value.isdigit() else -1  # llhttp has validated it already
        elif low == b"transfer-encoding":
            if value.strip().lower() == b"chunked":
                framing = CHUNKED
            else:
                bad_te = True
        elif low == b"expect":
            expect = value.strip().lower() == b"100-continue"
    return RequestInfo(host, framing, length, expect, bad_te)


def split_target(url: bytes) -> tuple[bytes, bytes]:
    """(authority, origin-form target) of a request target; absolute-form loses its authority."""
    if url[:7].lower() == b"http://":
        rest = url[7:]
        slash = rest.find(b"/")
        if slash < 0:
            return rest, b"/"
        return rest[:slash], rest[slash:]
    return b"", url


def upstream_head(method: bytes, target: bytes, headers: Headers, *, client_ip: bytes, via_version: bytes,
                  framing: int, add_host: bytes = b"") -> bytes:
    """The request head sent to a backend: HTTP/1.1, hop-by-hop gone, X-Forwarded-For and Via added.

    `add_host`: a Host header for requests without one (HTTP/1.0), which HTTP/1.1 requires.
    """
    extra = _connection_tokens(headers) if len(headers) > 0 else frozenset()
    parts = [method, b" ", target, b" HTTP/1.1\r\n"]
    if add_host:
        parts += (b"Host: ", add_host, CRLF)
    xff = b""
    via = b""
    for name, value in headers:
        low = name.lower()
        if low in HOP_BY_HOP or low in extra or low == b"expect":
            continue
        if low == b"x-forwarded-for":
            xff = xff + b", " + value if xff else value
        elif low == b"via":
            via = via + b", " + value if via else value
        elif low == b"content-length" and framing == CHUNKED:
            continue
        else:
            parts += (name, b": ", value, CRLF)
    parts += (b"X-Forwarded-For: ", xff + b", " + client_ip if xff else client_ip, CRLF)
    parts += (b"Via: ", via + b", " if via else b"", via_version, b" ", VIA_TOKEN, CRLF)
    if framing == CHUNKED:
        parts.append(b"Transfer-Encoding: chunked\r\n")
    parts.append(CRLF)
    return b"".join(parts)


@dataclass(frozen=True)
class ResponseInfo:
    framing: int  # LENGTH, CHUNKED, UNTIL_CLOSE or NO_BODY
    keep_alive_token: bool  # the upstream said Connection: close (False) or not (True)


def response_framing(status: int, headers: Headers, head_request: bool) -> int:
    if head_request or status in (204, 304) or 100 <= status < 200:
        return NO_BODY
    framing = UNTIL_CLOSE
    for name, value in headers:
        low = name.lower()
        if low == b"transfer-encoding" and value.strip().lower().endswith(b"chunked"):
            return CHUNKED
        if low == b"content-length":
            framing = LENGTH
    return framing


def client_head(status: int, reason_phrase: bytes, headers: Headers, *, version11: bool, keep_alive: bool,
                framing: int, queue_ms: float) -> tuple[bytes, int]:
    """The response head sent to the client, and the framing its body will use.

    Chunked upstream bodies stay chunked for HTTP/1.1 clients; close-delimited ones become
    chunked so that the client connection can be kept. HTTP/1.0 clients get close-delimited
    bodies when the length is unknown.
    """
    out_framing = framing
    if framing in (CHUNKED, UNTIL_CLOSE):
        if version11:
            out_framing = CHUNKED
        else:
            out_framing, keep_alive = UNTIL_CLOSE, False
    extra = _connection_tokens(headers)
    parts = [b"HTTP/1.1 " if version11 else b"HTTP/1.0 ", str(status).encode(), b" ",
             reason_phrase or reason(status), CRLF]
    via = b""
    for name, value in headers:
        low = name.lower()
        if low in HOP_BY_HOP or low in extra:
            continue
        if low == b"via":
            via = via + b", " + value if via else value
        elif low == b"content-length" and framing != LENGTH and framing != NO_BODY:
            continue
        else:
            parts += (name, b": ", value, CRLF)
    parts += (b"Via: ", via + b", " if via else b"", b"1.1 ", VIA_TOKEN, CRLF)
    parts += (b"X-Proxy-Queue-Ms: ", b"%.3f" % queue_ms, CRLF)
    if out_framing == CHUNKED:
        parts.append(b"Transfer-Encoding: chunked\r\n")
    if not keep_alive:
        parts.append(b"Connection: close\r\n")
    elif not version11:
        parts.append(b"Connection: keep-alive\r\n")
    parts.append(CRLF)
    return b"".join(parts), out_framing


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
