"""The raw-request corpus: request bytes -> the statuses the client gets and what reaches the backend.

Each case is sent on its own connection to one l7-proxy whose only backend parses with llhttp
and records every request it receives (helpers.proxy.RecordingBackend). A
desync shows up as a difference between the two columns: a request the proxy answered once but
the backend read twice (smuggled), or one the proxy refused that still reached the backend.

`reached` lists the targets of the complete requests the backend parsed, in order; () means
none. Chunked bodies are streamed, so a request whose body turns out to be malformed may have
had its head forwarded already: the backend then sees a connection aborted mid-request, never a
complete request. The statuses follow RFC 9112. The same corpus was sent through HAProxy 2.6.12
(as lbbench configures it, to the same recording backend): `HAProxy forwards` marks the requests
lbbench refuses that HAProxy repaired or passed on (it drops Content-Length beside chunked, merges
equal Content-Length and Host fields, unfolds obs-fold, accepts bare LF). Its statuses for what
neither supports differ (422 for other codings, 404 for CONNECT), and its size limits too (16 kB
buffers, no body limit).
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from helpers.proxy import (
    ProxyProcess,
    RecordingBackend,
    parse_responses,
    raw_conversation,
    request_bytes,
    start_proxy,
)

from lbbench.system.procs import Supervisor

LIMITS = ("--max-header-bytes", "4096", "--max-headers", "20", "--max-body-bytes", "10000",
          "--client-timeout", "30", "--health-interval", "0", "--maxconn", "4")


@dataclass(frozen=True)
class Case:
    name: str
    request: bytes
    statuses: tuple[int, ...]  # what the client reads, in order
    reached: tuple[bytes, ...] = ()  # targets of the complete requests the backend parsed
    body: bytes | None = None  # the body the (only) forwarded request carried, when it matters


def _post(head: bytes, body: bytes) -> bytes:
    return b"POST / HTTP/1.1\r\nHost: x\r\n" + head + b"\r\n" + body


def _get(fields: bytes = b"Host: x\r\n", target: bytes = b"/", version: bytes = b"HTTP/1.1") -> bytes:
    return b"GET " + target + b" " + version + b"\r\n" + fields + b"\r\n"


CHUNKED = b"Transfer-Encoding: chunked\r\n"
HIDDEN = b"GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"

SMUGGLING = [
    # HAProxy forwards both, chunked, without the Content-Length (RFC 9112 6.3 allows that too).
    Case("CL.TE", _post(b"Content-Length: 6\r\n" + CHUNKED, b"0\r\n\r\nG"), (400,)),
    Case("TE.CL", _post(CHUNKED + b"Content-Length: 3\r\n", b"8\r\nSMUGGLED\r\n0\r\n\r\n"), (400,)),
    Case("CL hides a request in its body", _get(b"Host: x\r\nContent-Length: %d\r\n" % len(HIDDEN)) + HIDDEN,
         (200,), (b"/",), HIDDEN),
    Case("chunked hides a request in its body", _post(CHUNKED, b"%x\r\n%s\r\n0\r\n\r\n" % (len(HIDDEN), HIDDEN)),
         (200,), (b"/",), HIDDEN),
    Case("chunk shorter than its size", _post(CHUNKED, b"3\r\nhello\r\n0\r\n\r\n"), (400,)),
    Case("chunk size overflow", _post(CHUNKED, b"FFFFFFFFFFFFFFFFF1\r\nhello\r\n0\r\n\r\n"), (400,)),
    Case("chunk size 0x5", _post(CHUNKED, b"0x5\r\nhello\r\n0\r\n\r\n"), (400,)),
    Case("chunk size with a space", _post(CHUNKED, b"5 \r\nhello\r\n0\r\n\r\n"), (400,)),  # HAProxy forwards
    Case("chunk extension", _post(CHUNKED, b"5;a=b\r\nhello\r\n0\r\n\r\n"), (200,), (b"/",), b"hello"),
    Case("chunked with a trailer", _post(CHUNKED, b"5\r\nhello\r\n0\r\nX-T: 1\r\n\r\n"), (200,), (b"/",),
         b"hello"),
]

CONTENT_LENGTH = [
    Case("two different Content-Length", _post(b"Content-Length: 5\r\nContent-Length: 6\r\n", b"hello!"), (400,)),
    # HAProxy forwards this one and the next (merged); RFC 9110 8.6 allows either.
    Case("two equal Content-Length", _post(b"Content-Length: 5\r\nContent-Length: 5\r\n", b"hello"), (400,)),
    Case("Content-Length list", _post(b"Content-Length: 5, 5\r\n", b"hello"), (400,)),
    Case("Content-Length -1", _post(b"Content-Length: -1\r\n", b"hello"), (400,)),
    Case("Content-Length +5", _post(b"Content-Length: +5\r\n", b"hello"), (400,)),
    Case("Content-Length 0x5", _post(b"Content-Length: 0x5\r\n", b"hello"), (400,)),
    Case("Content-Length 1 2", _post(b"Content-Length: 1 2\r\n", b"hello"), (400,)),
    Case("Content-Length empty", _post(b"Content-Length: \r\n", b"hello"), (400,)),
    Case("Content-Length overflow", _post(b"Content-Length: 99999999999999999999999\r\n", b"hello"), (400,)),
    Case("Content-Length over the limit", _post(b"Content-Length: 1000000000\r\n", b"hello"), (413,)),
    Case("Content-Length with trailing space", _post(b"Content-Length: 5 \r\n", b"hello"), (200,), (b"/",),
         b"hello"),
    Case("body cut short by the client", _post(b"Content-Length: 10\r\n", b"hello"), ()),
    Case("body over the limit", _post(b"Content-Length: 20000\r\n", b"z" * 20000), (413,)),
]

TRANSFER_ENCODING = [
    Case("TE chunked then x", _post(CHUNKED + b"Transfer-Encoding: x\r\n", b"0\r\n\r\n"), (400,)),
    Case("TE chunked twice", _post(CHUNKED + CHUNKED, b"0\r\n\r\n"), (400,)),
    Case("TE xchunked", _post(b"Transfer-Encoding: xchunked\r\n", b"0\r\n\r\n"), (501,)),
    Case("TE chunked, identity", _post(b"Transfer-Encoding: chunked, identity\r\n", b"0\r\n\r\n"), (400,)),
    Case("TE identity, chunked", _post(b"Transfer-Encoding: identity, chunked\r\n", b"0\r\n\r\n"), (501,)),
    Case("TE gzip, chunked", _post(b"Transfer-Encoding: gzip, chunked\r\n", b"0\r\n\r\n"), (501,)),
    Case("TE with a space before the colon", _post(b"Transfer-Encoding : chunked\r\n", b"0\r\n\r\n"), (400,)),
    Case("TE value after a tab", _post(b"Transfer-Encoding:\tchunked\r\n", b"5\r\nhello\r\n0\r\n\r\n"),
         (200,), (b"/",), b"hello"),
    Case("TE Chunked", _post(b"Transfer-Encoding: Chunked\r\n", b"5\r\nhello\r\n0\r\n\r\n"), (200,), (b"/",),
         b"hello"),
    Case("TE value after a vertical tab", _post(b"Transfer-Encoding:\x0bchunked\r\n", b"0\r\n\r\n"), (400,)),
    Case("TE name after a space (first line)",
         b"POST / HTTP/1.1\r\n Transfer-Encoding: chunked\r\nHost: x\r\n\r\n0\r\n\r\n", (400,)),
    # RFC 9112 6.1: Transfer-Encoding in HTTP/1.0 means faulty framing (HAProxy forwards it).
    Case("TE in HTTP/1.0", b"POST / HTTP/1.0\r\nHost: x\r\n" + CHUNKED + b"\r\n0\r\n\r\n", (400,)),
]

LINE_ENDINGS_AND_FOLDING = [
    # HAProxy forwards bare LF and obs-fold (unfolded); RFC 9112 2.2 and 5.2 let a server refuse both.
    Case("bare LF everywhere", b"GET / HTTP/1.1\nHost: x\n\n", (400,)),
    Case("bare LF after a field", b"GET / HTTP/1.1\r\nHost: x\nX: y\r\n\r\n", (400,)),
    Case("bare CR", b"GET / HTTP/1.1\rHost: x\r\n\r\n", (400,)),
    Case("bare LF in chunked framing", _post(CHUNKED, b"5\nhello\n0\n\n"), (400,)),
    Case("obs-fold hides TE", _post(b"X: y\r\n " + CHUNKED, b"0\r\n\r\n"), (400,)),
    Case("obs-fold of a TE value", _post(b"Transfer-Encoding:\r\n chunked\r\n", b"0\r\n\r\n"), (400,)),
    Case("obs-fold of a plain field", _get(b"Host: x\r\nX: a\r\n b\r\n"), (400,)),
    Case("empty lines before the request", b"\r\n\r\n" + _get(), (200,), (b"/",)),
]

CONTROL_BYTES = [
    Case("NUL in a value", _get(b"Host: x\r\nX: a\x00b\r\n"), (400,)),
    Case("SOH in a value", _get(b"Host: x\r\nX: a\x01b\r\n"), (400,)),
    Case("DEL in a name", _get(b"Host: x\r\nX\x7f: a\r\n"), (400,)),
    Case("space in a name", _get(b"Host: x\r\nX Y: z\r\n"), (400,)),
    Case("empty name", _get(b"Host: x\r\n: z\r\n"), (400,)),
    Case("NUL in the target", _get(target=b"/\x00"), (400,)),
    Case("space in the target", _get(target=b"/a b"), (400,)),
    Case("tab in the target", _get(target=b"/a\tb"), (400,)),
    Case("obs-text in a value", _get(b"Host: x\r\nX: caf\xe9\r\n"), (200,), (b"/",)),
    Case("unknown method", b"FOO / HTTP/1.1\r\nHost: x\r\n\r\n", (400,)),
    Case("lower-case version", _get(version=b"http/1.1"), (400,)),
]

PIPELINING = [
    Case("two GETs", _get(target=b"/1") + _get(target=b"/2"), (200, 200), (b"/1", b"/2")),
    Case("POST with a body, then GET", _post(b"Content-Length: 5\r\n", b"hello") + _get(target=b"/2"),
         (200, 200), (b"/", b"/2")),
    Case("chunked POST, then GET", _post(CHUNKED, b"5\r\nhello\r\n0\r\n\r\n") + _get(target=b"/2"),
         (200, 200), (b"/", b"/2")),
    Case("GET, then garbage", _get(target=b"/1") + b"GARBAGE\r\n\r\n", (200, 400), (b"/1",)),
    Case("GET, then a NUL in the target", _get(target=b"/1") + _get(target=b"/\x00"), (200, 400), (b"/1",)),
    Case("GET, then two Host fields", _get(target=b"/1") + _get(b"Host: x\r\nHost: y\r\n", b"/2"),
         (200, 400), (b"/1",)),
    Case("GET, then CL.TE", _get(target=b"/1") + _post(b"Content-Length: 6\r\n" + CHUNKED, b"0\r\n\r\nG"),
         (200, 400), (b"/1",)),
]

OVERSIZED = [
    Case("request line over the head limit", _get(target=b"/" + b"a" * 5000), (431,)),
    Case("field over the head limit", _get(b"Host: x\r\nX: " + b"a" * 5000 + b"\r\n"), (431,)),
    Case("too many fields", _get(b"Host: x\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(25))), (431,)),
    Case("chunked body over the limit",
         _post(CHUNKED, b"".join(b"1000\r\n" + b"z" * 4096 + b"\r\n" for _ in range(4)) + b"0\r\n\r\n"), (413,)),
]

HOST_AND_VERSION = [
    # RFC 9112 3.2: 400 for two Host fields, none in HTTP/1.1, or an invalid one. HAProxy answers 400
    # to two different ones and forwards the rest (equal ones merged).
    Case("two Host fields", _get(b"Host: x\r\nHost: y\r\n"), (400,)),
    Case("two equal Host fields", _get(b"Host: x\r\nHost: x\r\n"), (400,)),
    Case("no Host in HTTP/1.1", _get(b""), (400,)),
    Case("no Host in HTTP/1.0", _get(b"", version=b"HTTP/1.0"), (200,), (b"/",)),
    Case("empty Host", _get(b"Host: \r\n"), (200,), (b"/",)),
    Case("Host with a port", _get(b"Host: x:8080\r\n"), (200,), (b"/",)),
    Case("Host with a space", _get(b"Host: a b\r\n"), (400,)),
    Case("Host with trailing whitespace", _get(b"Host: x \t\r\n"), (200,), (b"/",)),
    Case("Host with a slash", _get(b"Host: a/b\r\n"), (400,)),
    Case("Host with an @", _get(b"Host: u@a\r\n"), (400,)),
    Case("IPv6 Host", _get(b"Host: [::1]:80\r\n"), (200,), (b"/",)),
    # RFC 9112 3.2.2; HAProxy answers 400 when the authority is not the Host.
    Case("absolute-form, other authority", _get(target=b"http://y/"), (400,)),
    Case("absolute-form https, other authority", _get(target=b"https://y/"), (400,)),
    Case("absolute-form, same authority", _get(target=b"http://X/a"), (200,), (b"/a",)),
    Case("absolute-form, authority with port 80", _get(target=b"http://x:80/a"), (200,), (b"/a",)),
    Case("absolute-form without Host", _get(b"", b"http://x/"), (400,)),
    Case("HTTP/0.9 line", b"GET /\r\n", (400,)),
    Case("HTTP/0.9 line and an empty line", b"GET /\r\n\r\n", (400,)),
    Case("HTTP/1.2", _get(version=b"HTTP/1.2"), (400,)),  # HAProxy forwards it, and the next one
    Case("HTTP/2.0 in HTTP/1 syntax", _get(version=b"HTTP/2.0"), (505,)),
    Case("CONNECT", b"CONNECT x:80 HTTP/1.1\r\nHost: x:80\r\n\r\n", (501,)),
    Case("Upgrade: websocket", _get(b"Host: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"), (501,)),
    Case("OPTIONS *", b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n", (200,), (b"*",)),
]

CORPUS = [*SMUGGLING, *CONTENT_LENGTH, *TRANSFER_ENCODING, *LINE_ENDINGS_AND_FOLDING, *CONTROL_BYTES,
          *PIPELINING, *OVERSIZED, *HOST_AND_VERSION]


@pytest.fixture(scope="module")
def recorder() -> Iterator[RecordingBackend]:
    with RecordingBackend() as backend:
        yield backend


@pytest.fixture(scope="module")
def proxy(recorder: RecordingBackend) -> Iterator[ProxyProcess]:
    with Supervisor() as sup:
        yield start_proxy(sup, [recorder.addr], *LIMITS)


def test_the_corpus_has_no_duplicate_names() -> None:
    assert len({c.name for c in CORPUS}) == len(CORPUS) >= 75


@pytest.mark.parametrize("case", CORPUS, ids=[c.name for c in CORPUS])
def test_raw_request(proxy: ProxyProcess, recorder: RecordingBackend, case: Case) -> None:
    mark = recorder.mark()
    # The client half-closes after its bytes: the proxy must answer what is complete and close.
    raw, closed = raw_conversation(proxy.addr, case.request, timeout_s=10.0, shut_write=True)
    # A normal request after the case, through the same backend: the proxy still serves, and
    # whatever the case sent to the backend has arrived before the check below.
    (after,) = parse_responses(raw_conversation(
        proxy.addr, request_bytes("/after", headers=[("Connection", "close")]), timeout_s=10.0)[0])
    assert after.status == 200
    received, errors, _ = recorder.since(mark)
    assert received[-1].target == b"/after"
    received = received[:-1]

    assert closed, "the proxy left the connection open"
    assert tuple(r.status for r in parse_responses(raw, after_close=True)) == case.statuses, raw
    assert tuple(r.target for r in received) == case.reached
    assert errors == []  # nothing the backend could not parse
    for r in received:
        assert len(r.header(b"host")) <= 1
    if case.body is not None:
        assert received[0].body == case.body


@pytest.mark.parametrize("pieces", [[b"GET /\r\n"], [b"GET /", b"\r\n"], [b"\r\nGET /index.html\n"]])
def test_http09_line_is_refused_while_the_client_still_waits(proxy: ProxyProcess, pieces: list[bytes]) -> None:
    """An HTTP/0.9 client sends its line and waits (no half-close): 400, not the 408 of the client timeout.

    The client timeout is 30 s and the client gives up after 10: a 400 in that window came
    without waiting for the timeout.
    """
    with socket.create_connection((proxy.addr.host, proxy.addr.port), timeout=10.0) as s:
        for piece in pieces:
            s.sendall(piece)
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
    (reply,) = parse_responses(answer)
    assert reply.status == 400 and b"HTTP/0.9" in reply.body
