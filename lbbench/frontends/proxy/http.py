"""HTTP/1.1 message pieces for the L7 proxy: header roles, heads, error responses.

Pure functions over bytes, no I/O. The parser callbacks sort each header field as it arrives
(one dict lookup on its raw spelling, see `request_roles`/`response_roles`): a field that is
simply forwarded goes straight into a flat list of "Name", ": ", "value", CRLF pieces, and the
few that need a decision (framing, Connection, Via, X-Forwarded-For, hop-by-hop) are kept aside
as "special" fields, decided here once the head is complete. The common message has none or
one of those, so its head is built with one join and no second pass.
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
# Forwarded fields as pieces: name, b": ", value, CRLF, name, ... after the slots of the start
# line (REQUEST_SLOTS: method, " ", target, " HTTP/1.1\r\n"; RESPONSE_SLOTS: the status line),
# filled in once the head is complete, so that the head is one join of the list the parser
# callbacks appended to, without a second list.
Fields = list[bytes]
REQUEST_SLOTS = 4
RESPONSE_SLOTS = 1
Special = tuple[tuple[int, bytes, bytes], ...]  # (role, name, value) of the fields that need a decision
_NONE: frozenset[bytes] = frozenset()

# What the proxy does with a header field, by lower-cased name. PASS: forwarded as it is;
# HOST and LENGTH are forwarded in place and noted; the others are special.
PASS, HOST, LENGTH_FIELD, DROP, TE, CONNECTION, EXPECT, XFF, VIA = range(9)
UNKNOWN = -1  # a spelling not in the cache yet: look it up with request_role() / response_role()
_HOP = {name: DROP for name in HOP_BY_HOP}
_REQUEST_ROLE = {**_HOP, b"host": HOST, b"content-length": LENGTH_FIELD, b"transfer-encoding": TE,
                 b"connection": CONNECTION, b"expect": EXPECT, b"x-forwarded-for": XFF, b"via": VIA}
_RESPONSE_ROLE = {**_HOP, b"content-length": LENGTH_FIELD, b"transfer-encoding": TE, b"connection": CONNECTION,
                  b"via": VIA}
_CACHE_MAX = 1024  # distinct spellings remembered per table (bounded: peers choose them)
request_roles: dict[bytes, int] = {}  # raw spelling -> role; a miss goes through request_role()
response_roles: dict[bytes, int] = {}
# The callbacks' lookups, bound once: CPython 3.11 compiles `imported_name.get(...)` as an attribute
# load and a call, which makes a new bound method object on every call.
known_request_role = request_roles.get
known_response_role = response_roles.get
_declared: dict[bytes, frozenset[bytes]] = {}


def reason(status: int) -> bytes:
    return _REASONS.get(status, b"Unknown")


def _learn(cache: dict[bytes, int], table: dict[bytes, int], name: bytes) -> int:
    role = table.get(name.lower(), PASS)
    if len(cache) >= _CACHE_MAX:
        cache.clear()
    cache[name] = role
    return role


def request_role(name: bytes) -> int:
    """The role of a request field name (and remember its spelling)."""
    return _learn(request_roles, _REQUEST_ROLE, name)


def response_role(name: bytes) -> int:
    return _learn(response_roles, _RESPONSE_ROLE, name)


def _declared_hop_by_hop(value: bytes) -> frozenset[bytes]:
    """Header names a Connection field declares hop-by-hop, besides the usual ones (cached: nearly
    every backend sends the same `keep-alive`)."""
    names = _declared.get(value)
    if names is None:
        names = frozenset({t.strip().lower() for t in value.split(b",")} - {b"close", b"keep-alive", b""})
        if len(_declared) >= _CACHE_MAX:
            _declared.clear()
        _declared[value] = names
    return names


def declares_hop_by_hop(value: bytes) -> bool:
    """Whether a Connection field names fields to drop besides the usual ones (most say only keep-alive)."""
    names = _declared.get(value)
    return bool(names if names is not None else _declared_hop_by_hop(value))


def _without(fields: Fields, drop: frozenset[bytes], table: dict[bytes, int], start: int) -> Fields:
    """`fields` (from `start`) without the PASS fields a Connection header declared hop-by-hop (rare)."""
    out: Fields = []
    for i in range(start, len(fields), 4):
        name = fields[i]
        low = name.lower()
        if low not in drop or table.get(low, PASS) != PASS:
            out += fields[i:i + 4]
    return out


class RequestHead:
    """What the special fields of a request head decide, besides the forwarded fields."""

    __slots__ = ("bad_transfer_encoding", "content_length", "drop", "expect_continue", "framing", "via", "xff")

    def __init__(self) -> None:
        self.framing = NO_BODY  # NO_BODY, LENGTH or CHUNKED
        self.content_length = 0
        self.expect_continue = False
        self.bad_transfer_encoding = False  # a transfer coding other than plain "chunked"
        self.xff = b""
        self.via = b""
        self.drop = _NONE  # declared hop-by-hop by Connection


PLAIN_REQUEST = RequestHead()  # a request without special fields (never modified)


def scan_request(special: Special) -> RequestHead:
    """Decide a request's special fields, in their order (the last Content-Length or chunked wins)."""
    rh = RequestHead()
    for role, _, value in special:
        if role == LENGTH_FIELD:  # llhttp has rejected duplicates that differ and Content-Length with chunked
            rh.framing = LENGTH
            value = value.strip(b" \t")  # llhttp keeps trailing whitespace (RFC 9110 5.5: not part of the value)
            rh.content_length = int(value) if value.isdigit() else -1
        elif role == TE:
            if value.strip().lower() == b"chunked":
                rh.framing = CHUNKED
            else:
                rh.bad_transfer_encoding = True
        elif role == CONNECTION:
            rh.drop = rh.drop | _declared_hop_by_hop(value)
        elif role == EXPECT:
            rh.expect_continue = value.strip().lower() == b"100-continue"
        elif role == XFF:
            rh.xff = rh.xff + b", " + value if rh.xff else value
        elif role == VIA:
            rh.via = rh.via + b", " + value if rh.via else value
    return rh


def split_target(url: bytes) -> tuple[bytes, bytes]:
    """(authority, origin-form target) of a request target; absolute-form loses its authority."""
    scheme = url[:8].lower()
    if url[:1] != b"/" and (scheme[:7] == b"http://" or scheme == b"https://"):
        rest = url[len(scheme) if scheme == b"https://" else 7:]
        slash = rest.find(b"/")
        if slash < 0:
            return rest, b"/"
        return rest[:slash], rest[slash:]
    return b"", url


def forwarding_tail(client_ip: bytes, via_version: bytes) -> bytes:
    """The end of a request head for a request that brought no X-Forwarded-For, Via or chunked body."""
    return b"X-Forwarded-For: " + client_ip + b"\r\nVia: " + via_version + b" " + VIA_TOKEN + CRLF + CRLF


def upstream_head(method: bytes, target: bytes, fields: Fields, rh: RequestHead, client_ip: bytes,
                  via_version: bytes, add_host: bytes = b"", tail: bytes = b"") -> bytes:
    """The request head sent to a backend: HTTP/1.1, hop-by-hop fields gone, X-Forwarded-For and Via extended.

    `fields`: the forwarded fields after their REQUEST_SLOTS, which this fills (the list is used up).
    `add_host`: a Host field for requests without one (HTTP/1.0), which HTTP/1.1 requires.
    `tail`: forwarding_tail(client_ip, via_version), precomputed by the caller for the common case.
    """
    fields[0] = method
    fields[2] = target
    parts = fields
    if add_host or rh.drop:
        parts = fields[:REQUEST_SLOTS]
        if add_host:
            parts.append(b"Host: " + add_host + CRLF)
        parts += _without(fields, rh.drop, _REQUEST_ROLE, REQUEST_SLOTS) if rh.drop else fields[REQUEST_SLOTS:]
    if rh.xff or rh.via or rh.framing == CHUNKED or not tail:
        parts += (b"X-Forwarded-For: ", rh.xff + b", " + client_ip if rh.xff else client_ip,
                  b"\r\nVia: ", rh.via + b", " if rh.via else b"", via_version, b" ", VIA_TOKEN, CRLF,
                  b"Transfer-Encoding: chunked\r\n\r\n" if rh.framing == CHUNKED else CRLF)
    else:
        parts.append(tail)
    return b"".join(parts)


status_lines: dict[tuple[bool, int, bytes], bytes] = {}  # (HTTP/1.1?, status, reason) -> status line
known_status_line = status_lines.get  # bound once, as known_request_role


def status_line(version11: bool, status: int, reason_phrase: bytes) -> bytes:
    """The client's status line (`known_status_line` is the caller's first try)."""
    key = (version11, status, reason_phrase)
    line = status_lines.get(key)
    if line is None:
        line = b"%s %d %s\r\n" % (b"HTTP/1.1" if version11 else b"HTTP/1.0", status,
                                   reason_phrase or reason(status))
        if len(status_lines) < 1024:  # reason phrases come from backends: bounded
            status_lines[key] = line
    return line


# The end of the common response head (kept alive, HTTP/1.1, no Via from the backend, not chunked);
# a request that did not wait in the queue has its first figure as a constant (one float less to format).
PLAIN_END = b"Via: 1.1 " + VIA_TOKEN + b"\r\nX-Proxy-Queue-Ms: %.3f\r\nX-Proxy-Upstream-Ms: %.3f\r\n\r\n"
PLAIN_END_UNQUEUED = b"Via: 1.1 " + VIA_TOKEN + b"\r\nX-Proxy-Queue-Ms: 0.000\r\nX-Proxy-Upstream-Ms: %.3f\r\n\r\n"


def client_head(status: int, reason_phrase: bytes, fields: Fields, has_length: bool, special: Special,
                head_request: bool, version11: bool, keep_alive: bool, queue_ms: float, upstream_ms: float,
                ) -> tuple[bytes, int, int, bool]:
    """The response head for the client, from the backend's fields sorted by the parser callbacks.

    `fields` has RESPONSE_SLOTS before the forwarded fields; this fills them (the list is used up).
    Returns (head, framing of the backend's body, framing of the client's body, keep-alive).
    X-Proxy-Queue-Ms is the request's time in the central queue, X-Proxy-Upstream-Ms the time
    from its dispatch to this response head: how long it held the backend slot (HAProxy's Tr,
    plus the connect), which the queueing model's server time is.
    Chunked and close-delimited backend bodies are sent chunked to HTTP/1.1 clients, so that
    their connection can be kept; HTTP/1.0 clients get them close-delimited.
    """
    if has_length and not special and keep_alive and version11 and not head_request and status >= 200 \
            and status != 204 and status != 304:
        # The common response: forwarded as it came, then our end (what the general path below builds).
        fields[0] = known_status_line((True, status, reason_phrase)) or status_line(True, status, reason_phrase)
        fields.append(PLAIN_END % (queue_ms, upstream_ms) if queue_ms else PLAIN_END_UNQUEUED % upstream_ms)
        return b"".join(fields), LENGTH, LENGTH, True
    framing = LENGTH if has_length else UNTIL_CLOSE
    via = b""
    drop = _NONE
    for role, _, value in special:
        if role == CONNECTION:
            names = _declared_hop_by_hop(value)
            if names:
                drop = drop | names
        elif role == TE:
            if value.strip().lower().endswith(b"chunked"):
                framing = CHUNKED
        elif role == VIA:
            via = via + b", " + value if via else value
    if head_request or status < 200 or status == 204 or status == 304:
        framing = NO_BODY
    out_framing = framing
    if framing in (CHUNKED, UNTIL_CLOSE):
        if version11:
            out_framing = CHUNKED
        else:
            out_framing, keep_alive = UNTIL_CLOSE, False
    line = known_status_line((version11, status, reason_phrase)) or status_line(version11, status, reason_phrase)
    if drop:
        parts = [line]
        parts += _without(fields, drop, _RESPONSE_ROLE, RESPONSE_SLOTS)
    else:
        fields[0] = line
        parts = fields
    if not via and out_framing != CHUNKED and keep_alive and version11:
        parts.append(PLAIN_END % (queue_ms, upstream_ms) if queue_ms else PLAIN_END_UNQUEUED % upstream_ms)
    else:
        parts += (
            b"Via: ", via + b", " if via else b"", b"1.1 ", VIA_TOKEN,
            b"\r\nX-Proxy-Queue-Ms: %.3f\r\nX-Proxy-Upstream-Ms: %.3f\r\n" % (queue_ms, upstream_ms),
            b"Transfer-Encoding: chunked\r\n" if out_framing == CHUNKED else b"",
            b"" if keep_alive and version11 else b"Connection: keep-alive\r\n" if keep_alive else
            b"Connection: close\r\n",
            CRLF,
        )
    return b"".join(parts), framing, out_framing, keep_alive


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
