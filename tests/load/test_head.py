"""The client's fast path for a whole response (lbbench.load.head, C twin lbbench.load._scan) against httptools.

Differential: each response (generated, hostile, split across reads, several on one connection)
is fed to a real `_Conn` three ways: httptools only (the client without the C module), the
pure-Python scan (the specification), the C scan. What the
connection records (status, pod, timings, keep-alive, complete or error) must be identical. The
two scans must also agree with each other on every input, and plain responses must actually take
the fast path (else the comparison would prove nothing). Then the client over real sockets: a real
pod, and scripted servers whose answers take the fast path, or not.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import math
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
from helpers.client_peers import fetch, run, scripted
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from lbbench.cluster.standalone import start_pod
from lbbench.load import head
from lbbench.load.client import Request, _Conn
from lbbench.system.procs import Supervisor

HAS_NATIVE = importlib.util.find_spec("lbbench.load._scan") is not None
if HAS_NATIVE:
    from lbbench.load._scan import scan as native_scan


SCANS: dict[str, head.Scan | None] = {"httptools": None, "pure": head.scan_py}
if HAS_NATIVE:
    SCANS["native"] = native_scan


@contextlib.contextmanager
def scanning_with(scan: head.Scan | None) -> Iterator[None]:
    saved = head.scan
    head.scan = scan
    try:
        yield
    finally:
        head.scan = saved


class _Sink:
    """Stands in for the HttpClient: notes how each request on the connection ended."""

    def __init__(self) -> None:
        self.ended: list[tuple[Any, ...]] = []

    def response_complete(self, conn: _Conn) -> None:
        req = conn.req
        assert req is not None
        self.ended.append(("complete", conn.keep_alive, *_fields(req)))
        conn.req = None
        if not conn.keep_alive:
            conn.closed = True  # the client closes it (nothing more is read from it)

    def fail(self, req: Request, error: str) -> None:
        self.ended.append(("failed", error, *_fields(req)))


def _fields(req: Request) -> tuple[Any, ...]:
    def f(x: float) -> Any:
        return "nan" if math.isnan(x) else x

    return (req.status, req.pod, req.pod_ip, f(req.queue_ms), f(req.service_ms), f(req.proxy_queue_ms),
            f(req.proxy_upstream_ms))


def outcome(scan: head.Scan | None, responses: list[list[bytes]]) -> list[tuple[Any, ...]]:
    """Feed each response's reads to one connection, a fresh request per response, as the client
    does; what was recorded, and the state left behind (got bytes, head read, length known, ended)."""
    sink = _Sink()
    conn = _Conn(sink, 0)  # type: ignore[arg-type]
    out: list[tuple[Any, ...]] = []
    with scanning_with(scan):
        for reads in responses:
            if conn.closed:
                break
            req = Request(0.0, 0.0, -1)
            conn.req = req
            conn.got_bytes = conn.headers_done = conn.length_known = conn.complete = False
            for data in reads:
                if conn.closed or conn.req is None:
                    break
                conn.data_received(data)
            out.append((conn.got_bytes, conn.headers_done, conn.length_known, conn.complete, conn.closed,
                        *_fields(req)))
    return [*out, *sink.ended]


def agree(responses: list[list[bytes]]) -> list[tuple[Any, ...]]:
    """Every scanner's outcome is httptools' own; returns it."""
    expected = outcome(None, responses)
    for name, scan in SCANS.items():
        assert outcome(scan, responses) == expected, name
    return expected


def same_scan(a: head.Head | None, b: head.Head | None) -> bool:
    if a is None or b is None:
        return a is b
    return [x if x == x else "nan" for x in a] == [x if x == x else "nan" for x in b]


# -- generated responses ------------------------------------------------------------------------
NAMES = [b"x-pod", b"X-Pod", b"x-pod-ip", b"X-POD-IP", b"x-queue-ms", b"x-service-ms", b"X-Service-Ms",
         b"x-proxy-queue-ms", b"x-proxy-upstream-ms", b"content-length", b"Content-Length", b"connection",
         b"Connection", b"transfer-encoding", b"Transfer-Encoding", b"upgrade", b"proxy-connection", b"Date",
         b"Server", b"Content-Type", b"keep-alive", b"x-pod ", b"x-p\x00d", b"x pod", b"", b"x-pod\t", b"\tx-pod",
         b"content-length2", b"x-p\xe9d"]
VALUES = [b"web-a", b"127.10.0.2", b"0.012", b"10.021", b"1e3", b"-0", b"inf", b"nan", b"1_0", b"_1", b"0x10",
          b"1.5 ", b" 1.5", b"1.5\t", b"", b" ", b"keep-alive", b"Keep-Alive", b"close", b"CLOSE", b"upgrade",
          b"close, keep-alive", b"chunked", b"3", b"03", b"+3", b"3 3", b"-1", b"99999999999999999999",
          b"text/plain; charset=utf-8", b"nginx/1.22.1", b"caf\xe9", b"a\x7fb", b"a\x00b", b"a\tb", b"a  b"]
SEPS = [b": ", b":", b":  ", b":\t", b" :", b": \t"]
EOLS = [b"\r\n"] * 12 + [b"\n", b"\r", b"\r\r\n"]


@st.composite
def response(draw: st.DrawFn, plain: bool = False) -> bytes:
    """One response; `plain` ones are within the fast path's subset (the body fits its length)."""
    body = draw(st.binary(max_size=12))
    if plain:
        status = draw(st.sampled_from([200, 201, 302, 404, 429, 500, 503, 599]))
        reason = draw(st.sampled_from([b"OK", b"", b"Not Found", b"Weird: reason (x)"]))
        lines = [b"HTTP/1.1 %d %s" % (status, reason)]
        fields = draw(st.lists(st.tuples(st.sampled_from([n for n in NAMES[:20] if n.lower() not in (
            b"content-length", b"connection", b"transfer-encoding", b"upgrade", b"proxy-connection")]),
            st.sampled_from([v for v in VALUES if v.strip(b" ") == v and v and all(32 <= c < 127 for c in v)])),
            max_size=8))
        lines += [n + b": " + v for n, v in fields]
        at = draw(st.integers(0, len(lines) - 1)) + 1
        lines.insert(at, b"Content-Length: %d" % len(body))
        if draw(st.booleans()):
            lines.insert(at, b"Connection: " + draw(st.sampled_from([b"keep-alive", b"close", b"Close"])))
        return b"\r\n".join(lines) + b"\r\n\r\n" + body
    version = draw(st.sampled_from([b"HTTP/1.1"] * 6 + [b"HTTP/1.0", b"HTTP/1.2", b"http/1.1", b"HTTP/2.0"]))
    code = draw(st.sampled_from([b"200", b"204", b"304", b"100", b"101", b"199", b"302", b"404", b"503", b"599",
                                 b"600", b"999", b"020", b"2x0", b"20", b"2000"]))
    reason = draw(st.sampled_from([b" OK", b" ", b"", b" Not\tFound", b" caf\xe9", b"  OK"]))
    head_: bytes = version + b" " + code + reason + draw(st.sampled_from(EOLS))
    for _ in range(draw(st.integers(0, 8))):
        head_ += draw(st.sampled_from(NAMES)) + draw(st.sampled_from(SEPS)) + draw(st.sampled_from(VALUES))
        head_ += draw(st.sampled_from(EOLS))
    if draw(st.integers(0, 3)):  # mostly a length that is right, or one off
        head_ += b"Content-Length: %d\r\n" % (len(body) + draw(st.sampled_from([0, 0, 0, -1, 1])))
    head_ += draw(st.sampled_from([b"\r\n"] * 6 + [b"\n", b""]))
    return head_ + body


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} - {0, len(data)})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


SETTINGS = settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(st.lists(st.one_of(response(), response(plain=True)), min_size=1, max_size=3),
       st.lists(st.lists(st.integers(0, 400), max_size=2), min_size=3, max_size=3))
@example([b"HTTP/1.0 100 OK\r\n\r\n", b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"], [[], [], []])  # CI found
def test_generated_responses_record_what_httptools_records(responses: list[bytes], cuts: list[list[int]]) -> None:
    agree([split(r, c) for r, c in zip(responses, cuts, strict=False)])


@SETTINGS
@given(st.one_of(response(), response(plain=True), st.binary(max_size=300)))
def test_the_c_scan_is_the_pure_scan(data: bytes) -> None:
    if HAS_NATIVE:
        assert same_scan(native_scan(data), head.scan_py(data))


@SETTINGS
@given(st.lists(response(plain=True), min_size=1, max_size=3))
def test_plain_responses_take_the_fast_path(responses: list[bytes]) -> None:
    for r in responses:
        assert head.scan_py(r) is not None, r
    agree([[r] for r in responses])


@SETTINGS
@given(response(plain=True), response(plain=True), st.integers(1, 400))
def test_a_second_response_in_the_same_read_is_left_to_httptools(first: bytes, second: bytes, cut: int) -> None:
    """Bytes beyond one response (the next one, whole or in part): httptools decides, and the next
    read, which continues a response httptools has begun, is not taken for a new head."""
    assume(cut < len(second))
    assert head.scan_py(first + second[:cut]) is None
    agree([[first + second[:cut]], [second[cut:]], [first]])


HOSTILE = [
    b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nok\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nok\n\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nx-pod: c\r\n\r\n3\r\nok\n\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nx-pod:\r\nContent-Length: 3\r\n\r\nok\n",  # an empty value (httptools joins the names)
    b"HTTP/1.1 200 OK\r\nx-pod: a\r\n b\r\nContent-Length: 3\r\n\r\nok\n",  # obs-fold
    b"HTTP/1.1 200 OK\r\nx-pod : a\r\nContent-Length: 3\r\n\r\nok\n",
    b"HTTP/1.1 200 OK\r\nx-pod: a \r\nContent-Length: 3\r\n\r\nok\n",
    b"HTTP/1.1 200 OK\nx-pod: a\nContent-Length: 3\n\nok\n",
    b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n",
    b"HTTP/1.1 204 No Content\r\nContent-Length: 3\r\n\r\n",
    b"HTTP/1.1 204 No Content\r\nContent-Length: 3\r\n\r\nok\n",  # no body, whatever the length says
    b"HTTP/1.1 304 Not Modified\r\nContent-Length: 3\r\n\r\n",
    b"HTTP/1.1 304 Not Modified\r\nContent-Length: 3\r\n\r\nok\n",
    b"HTTP/1.1 199 Early\r\nContent-Length: 3\r\n\r\nok\n",
    b"HTTP/1.1 100 Continue\r\nContent-Length: 3\r\n\r\nok\n",
    b"HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\nok\n",
    b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 3\r\n\r\nok\n",
    b"HTTP/1.1 200 OK\r\nConnection: close, keep-alive\r\nContent-Length: 3\r\n\r\nok\n",
    b"HTTP/1.1 200 OK\r\nConnection: close\r\nConnection: keep-alive\r\nContent-Length: 3\r\n\r\nok\n",
    b"HTTP/1.1 200 OK\r\nProxy-Connection: close\r\nContent-Length: 3\r\n\r\nok\n",
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nUpgrade: h2c\r\nContent-Length: 3\r\n\r\nok\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: -3\r\n\r\nok\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999999\r\n\r\nok\n",
    b"HTTP/1.1 200 OK\r\nx-pod: web-a\r\n\r\nthe body runs to the end",
    b"HTTP/1.1 200 OK\r\nx-queue-ms: 1_000.5\r\nx-service-ms: infinity\r\nx-proxy-queue-ms: 0x1\r\n"
    b"x-proxy-upstream-ms: -0.0\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nx-pod: a\r\nX-POD: b\r\nx-pod-ip: 1\r\nX-Pod-Ip: 2\r\nContent-Length: 0\r\n\r\n",
    b"SSH-2.0-OpenSSH\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\nHTTP/1.1 200 OK\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok",
    b"HTTP/1.1 2000 OK\r\nContent-Length: 3\r\n\r\nok\n",
    b"HTTP/1.1 200\r\nContent-Length: 3\r\n\r\nok\n",
    b"HTTP/1.1 200 \r\nContent-Length: 3\r\n\r\nok\n",
]


@pytest.mark.parametrize("data", HOSTILE)
def test_hostile_responses_record_what_httptools_records(data: bytes) -> None:
    agree([[data], [data]])
    for cut in range(1, len(data)):
        agree([split(data, [cut])])


def test_the_fast_path_takes_the_plain_heads_it_is_for() -> None:
    nginx = (b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Wed, 26 Nov 2025 18:00:00 GMT\r\n"
             b"Content-Type: text/plain\r\nContent-Length: 3\r\nConnection: keep-alive\r\n\r\nok\n")
    pod = (b"HTTP/1.1 503 Service Unavailable\r\nx-pod: web-a\r\nx-pod-ip: 127.10.0.2\r\nx-queue-ms: 0.012\r\n"
           b"x-service-ms: 10.021\r\nx-proxy-queue-ms: 1.5\r\nx-proxy-upstream-ms: 11\r\nContent-Length: 0\r\n"
           b"Connection: close\r\n\r\n")
    for scan in SCANS.values():
        if scan is None:
            continue
        assert same_scan(scan(nginx), (200, True, "", "", math.nan, math.nan, math.nan, math.nan))
        assert scan(pod) == (503, False, "web-a", "127.10.0.2", 0.012, 10.021, 1.5, 11.0)
    assert agree([[nginx], [pod]])[-1][:3] == ("complete", False, 503)


def _picked(env: dict[str, str], block_native: bool = False) -> str:
    code = ("import sys\n" + ("sys.modules['lbbench.load._scan'] = None\n" if block_native else "") +
            "from lbbench.load import head\n"
            "print('none' if head.scan is None else 'pure' if head.scan is head.scan_py else 'native', head.NATIVE)")
    return subprocess.run([sys.executable, "-c", code], env={**env, "PYTHONPATH": "."}, capture_output=True,
                          text=True, check=True).stdout.strip()


def test_which_scan_runs() -> None:
    """The C scan when built; httptools alone without it; scan_py when LBBENCH_PURE_SCAN=1 asks for it."""
    assert _picked({"LBBENCH_PURE_SCAN": "1"}) == "pure False"
    assert _picked({}, block_native=True) == "none False"
    if HAS_NATIVE:
        assert _picked({}) == "native True"


# -- over real sockets ---------------------------------------------------------------------------------
@pytest.fixture(params=list(SCANS))
def scan_name(request: pytest.FixtureRequest) -> Iterator[str]:
    with scanning_with(SCANS[request.param]):
        yield request.param


def test_keepalive_requests_to_a_real_pod(supervisor: Supervisor, scan_name: str) -> None:
    _, addr = start_pod(supervisor, "web-a", service="const:1ms", slots=4)
    reqs = run(fetch(addr, mode="keepalive:2", n=30, sequential=False))
    assert [r.error for r in reqs] == [""] * 30
    assert {r.status for r in reqs} == {200} and {r.pod for r in reqs} == {"web-a"}
    assert {r.pod_ip for r in reqs} == {addr.host}
    assert all(r.service_ms > 0.5 and r.queue_ms >= 0 for r in reqs)
    assert len({r.conn_id for r in reqs}) == 2 and sum(r.new_conn for r in reqs) == 2


PROXIED = (b"HTTP/1.1 200 OK\r\nx-pod: web-b\r\nx-pod-ip: 127.0.0.9\r\nx-queue-ms: 0.5\r\nx-service-ms: 2.25\r\n"
           b"x-proxy-queue-ms: 0.125\r\nx-proxy-upstream-ms: 3.5\r\nContent-Length: 3\r\n\r\nok\n")


def test_whole_split_chunked_and_closing_answers_over_a_socket(scan_name: str) -> None:
    """One keep-alive connection: a whole answer, one whose head comes in two writes, a chunked one,
    a whole one again (httptools is between responses), then one that closes the connection."""
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nx-pod: web-c\r\n\r\n3\r\nok\n\r\n0\r\n\r\n"
    closing = PROXIED.replace(b"Content-Length", b"Connection: close\r\nContent-Length")

    def answer(conn: int, n: int, tr: asyncio.Transport) -> None:
        if n == 1:
            tr.write(PROXIED[:40])
            asyncio.get_running_loop().call_later(0.02, tr.write, PROXIED[40:])
        else:
            tr.write({2: chunked, 4: closing}.get(n, PROXIED))

    async def go() -> list[Request]:
        async with scripted(answer) as addr:
            return await fetch(addr, mode="keepalive:1", n=6, timeout_s=2)

    reqs = run(go())
    assert [r.error for r in reqs] == [""] * 6
    assert [r.pod for r in reqs] == ["web-b", "web-b", "web-c", "web-b", "web-b", "web-b"]
    assert [(r.queue_ms, r.service_ms, r.proxy_queue_ms, r.proxy_upstream_ms) for r in reqs if r.pod == "web-b"] \
        == [(0.5, 2.25, 0.125, 3.5)] * 5
    assert [r.pod_ip for r in reqs if r.pod == "web-b"] == ["127.0.0.9"] * 5
    ids = [r.conn_id for r in reqs]
    assert ids[0] == ids[4] != ids[5]  # "Connection: close" on the 5th: the 6th needs a new connection
    assert [r.new_conn for r in reqs] == [True, False, False, False, False, True]


def test_a_bad_length_is_truncated_and_garbage_is_other(scan_name: str) -> None:
    def answer(conn: int, n: int, tr: asyncio.Transport) -> None:
        if conn == 0:
            tr.write(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nok\n")
            tr.close()
        else:
            tr.write(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nok\n")

    async def go() -> list[Request]:
        async with scripted(answer) as addr:
            return await fetch(addr, n=2, timeout_s=2)

    reqs = run(go())
    assert [(r.error, r.status) for r in reqs] == [("truncated", 200), ("other", 0)]


def test_timing_headers_hold_over_many_requests(scan_name: str) -> None:
    async def go() -> tuple[list[Request], float]:
        def answer(conn: int, n: int, tr: asyncio.Transport) -> None:
            tr.write(PROXIED)

        async with scripted(answer) as addr:
            t0 = time.monotonic()
            reqs = await fetch(addr, mode="keepalive:4", n=400, sequential=False, timeout_s=5)
            return reqs, time.monotonic() - t0

    reqs, _ = run(go())
    assert len(reqs) == 400 and {r.error for r in reqs} == {""}
    assert {(r.pod, r.proxy_upstream_ms) for r in reqs} == {("web-b", 3.5)}
