"""The proxy's C head scan (lbbench/frontends/proxy/_heads.c) against its llhttp path.

Differential: each request and response (generated around the scan's subset and just outside it:
other methods and versions, framing fields, hop-by-hop fields, odd spacing, bare LF, pipelined and
trailing bytes) goes through two in-process proxies, one with the scan and one parsing everything
with httptools, as the proxy does without the C module. What reaches the backend and the client,
the proxy's counters and the connections' fate must be the same, byte for byte (the upstream time
header aside: it is a clock reading). Plain messages must actually take the scan, else the
comparison proves nothing. Then both builds over real sockets: `lbbench serve proxy` with the scan
and with LBBENCH_PURE_HEADS=1, in front of a real pod, answer the same requests with the same bytes.
"""

from __future__ import annotations

import asyncio
import gc
import importlib.util
import random
import re
import socket
import sys
import types
from collections.abc import Callable, Iterable
from typing import Any

import pytest
from helpers.proxy import start_proxy
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from lbbench.cluster.standalone import start_pod
from lbbench.frontends.proxy import exchange as exchange_module
from lbbench.frontends.proxy import request as request_module
from lbbench.frontends.proxy.app import ProxyApp
from lbbench.frontends.proxy.client import ClientConnection
from lbbench.frontends.proxy.config import ProxyConfig
from lbbench.frontends.proxy.queue import ServicePool
from lbbench.frontends.proxy.route import Router
from lbbench.frontends.proxy.upstream import UpstreamConnection
from lbbench.model.addresses import HostPort
from lbbench.model.proxy import HealthCheck as ProxyHealthCheck
from lbbench.model.proxy import ProxySettings
from lbbench.model.service import Endpoint, ServiceSpec
from lbbench.system.compiled import PURE_HEADS_ENV, proxy_heads
from lbbench.system.procs import Supervisor

HAS_NATIVE = importlib.util.find_spec("lbbench.frontends.proxy._heads") is not None
pytestmark = pytest.mark.skipif(not HAS_NATIVE, reason="lbbench/frontends/proxy/_heads.c is not built "
                                                       "(pip install -e . with a C compiler)")
if HAS_NATIVE:
    from lbbench.frontends.proxy import _heads

HOST = b"web.shop.svc.cluster.local"
WRK_REQUEST = b"GET / HTTP/1.1\r\nHost: " + HOST + b"\r\n\r\n"
NGINX_RESPONSE = (b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Thu, 01 Jan 2026 00:00:00 GMT\r\n"
                  b"Content-Type: application/octet-stream\r\nContent-Length: 3\r\nConnection: keep-alive\r\n"
                  b"\r\nok\n")
_CLOCK = re.compile(rb"X-Proxy-Upstream-Ms: [0-9.]+")


class RecordingTransport:
    """Stands in for a socket transport in-process: records what is written and how it ends."""

    def __init__(self) -> None:
        self.out = bytearray()
        self.ended = ""  # "", "close", "abort" or "eof"

    def write(self, data: bytes) -> None:
        self.out += data

    def writelines(self, parts: Iterable[bytes]) -> None:
        for p in parts:
            self.out += p

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40000) if name == "peername" else default

    def is_closing(self) -> bool:
        return self.ended not in ("", "eof")

    def pause_reading(self) -> None: ...
    def resume_reading(self) -> None: ...

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.ended = "eof"

    def close(self) -> None:
        self.ended = self.ended or "close"

    def abort(self) -> None:
        self.ended = "abort"


Record = tuple[tuple[tuple[bytes, str], ...], bytes, str, dict[str, int], dict[str, int], int]


class Counting:
    """Wraps a scan function: how often it answered."""

    def __init__(self, fn: Callable[[bytes], Any]) -> None:
        self.fn = fn
        self.hits = 0

    def __call__(self, data: bytes) -> Any:
        found = self.fn(data)
        self.hits += found is not None
        return found


def exchange(requests: list[bytes], responses: list[bytes], scan: bool) -> tuple[Record, int]:
    """Each request read in turn by one client connection, each response by the backend connection
    that serves it; what the backend and the client got, the counters, and how often the scan answered."""
    out: list[Any] = []

    async def main() -> None:
        svc = ServiceSpec("web", "shop", "ClusterIP", "127.97.0.1", 80, 8080)
        st_ = ProxySettings(maxconn=0, health=ProxyHealthCheck(interval_s=0))
        app = ProxyApp(ProxyConfig(HostPort("127.0.0.1", 0), None, (svc,), (), (), st_, default_service=svc.key))
        pool = ServicePool(svc.key, st_, random.Random(0), app.upstreams, svc.dns_name)
        pool.set_endpoints((Endpoint("web-0", "127.0.0.10", 8080),))
        app.pools[svc.key] = pool
        app.router = Router([(svc.dns_name, "/", pool)], pool)
        req_scan, resp_scan = Counting(_heads.request), Counting(_heads.response)
        ups = []
        for _ in range(3):  # idle keep-alive connections, so that no test connects anywhere
            up = UpstreamConnection(pool.backends[0], pool)
            up.scan = resp_scan if scan else None
            up.connection_made(RecordingTransport())  # type: ignore[arg-type]
            up.release(True)
            ups.append(up)
        client_t = RecordingTransport()
        client = ClientConnection(app)
        client.reader.scan = req_scan if scan else None
        client.connection_made(client_t)  # type: ignore[arg-type]
        answers = iter(responses)
        for data in requests:
            client.data_received(data)
            while (ex := client.current) is not None and (up := ex.upstream) is not None and up.ex is ex:
                piece = next(answers, None)
                if piece is None:
                    break
                up.data_received(piece)
        backends = tuple((bytes(t.out), t.ended) for t in (u.transport for u in ups)
                         if isinstance(t, RecordingTransport))
        out.append(((backends, _CLOCK.sub(b"X-Proxy-Upstream-Ms: T", bytes(client_t.out)), client_t.ended,
                     app.counters(), pool.counters(), len(pool.backends[0].idle)),
                    req_scan.hits + resp_scan.hits))

    asyncio.run(main())
    result: tuple[Record, int] = out[0]
    return result


def same_both_ways(requests: list[bytes], responses: list[bytes]) -> int:
    """Assert that the scan changes nothing; how often it answered."""
    with_scan, hits = exchange(requests, responses, scan=True)
    without, none = exchange(requests, responses, scan=False)
    assert none == 0
    assert with_scan == without
    return hits


# -- the subset is taken ------------------------------------------------------------------------

def test_plain_messages_take_the_scan() -> None:
    assert same_both_ways([WRK_REQUEST], [NGINX_RESPONSE]) == 2
    keep = [b"GET /a?b=1 HTTP/1.1\r\nhost: " + HOST + b"\r\nAccept:  */*\r\n\r\n",
            b"HEAD / HTTP/1.1\r\nHost: " + HOST + b"\r\nConnection: Keep-Alive\r\n\r\n"]
    ok = b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
    # the HEAD's response is llhttp's to read (a HEAD response has no body, whatever its length says)
    assert same_both_ways(keep, [ok, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n"]) == 3


def test_the_scan_reads_what_the_callbacks_would() -> None:
    req = b"GET /x HTTP/1.1\r\nHost:" + HOST + b"\r\nX-A:  b\r\nConnection: close\r\n\r\n"
    head = b"GET /x HTTP/1.1\r\nHost: " + HOST + b"\r\nX-A: b\r\n"  # the request line as it came, the fields
    assert _heads.request(req) == (b"GET", b"/x", HOST, head, 3, False)
    assert _heads.response(NGINX_RESPONSE) == (
        200, b"OK", b"Server: nginx/1.22.1\r\nDate: Thu, 01 Jan 2026 00:00:00 GMT\r\n"
                    b"Content-Type: application/octet-stream\r\nContent-Length: 3\r\n", b"ok\n", True)


@pytest.mark.parametrize("kind,data", [
    ("request", WRK_REQUEST + WRK_REQUEST),  # pipelined: llhttp's
    ("request", WRK_REQUEST[:-1]),  # not all here
    ("request", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n"),
    ("request", b"GET / HTTP/1.0\r\nHost: a\r\n\r\n"),
    ("request", b"GET http://a/ HTTP/1.1\r\nHost: a\r\n\r\n"),
    ("request", b"GET / HTTP/1.1\r\n\r\n"),  # no Host: llhttp's path refuses it
    ("request", b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"),
    ("request", b"GET / HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\n\r\n"),
    ("request", b"GET / HTTP/1.1\r\nHost: a \r\n\r\n"),
    ("request", b"GET / HTTP/1.1\nHost: a\n\n"),
    ("request", b"GET /\xc3\xa4 HTTP/1.1\r\nHost: a\r\n\r\n"),
    ("request", b"GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 10.0.0.1\r\n\r\n"),
    ("response", NGINX_RESPONSE + b"x"),  # bytes nobody asked for: llhttp's path ends the connection
    ("response", NGINX_RESPONSE[:-1]),  # the body is not all here
    ("response", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nok\n\r\n0\r\n\r\n"),
    ("response", b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx"),
    ("response", b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n"),
    ("response", b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"),
    ("response", b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n"),
    ("response", b"HTTP/1.1 200 \r\nContent-Length: 0\r\n\r\n"),
    ("response", b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nVia: 1.1 other\r\n\r\n"),
    ("response", b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: keep-alive, X-A\r\nX-A: 1\r\n\r\n"),
])
def test_the_scan_declines_what_the_proxy_decides(kind: str, data: bytes) -> None:
    """Declined, and the proxy then does with it what it always did (llhttp's path, the same either way)."""
    if kind == "request":
        assert _heads.request(data) is None
        same_both_ways([data], [NGINX_RESPONSE])
    else:
        assert _heads.response(data) is None
        same_both_ways([WRK_REQUEST], [data])


# -- generated messages around the subset ---------------------------------------------------------

_NAMES = [b"Host", b"host", b"User-Agent", b"Accept", b"Connection", b"Content-Length", b"Transfer-Encoding",
          b"X-Forwarded-For", b"Via", b"Expect", b"Keep-Alive", b"TE", b"Upgrade", b"X-Id", b"Bad Name"]
_VALUES = [HOST, b"keep-alive", b"close", b"Keep-Alive", b"0", b"3", b"chunked", b"a b", b"x ", b"", b"\xff",
           b"100-continue", b"h2c", b"10.0.0.1", b"web.shop.svc.cluster.local:80", b"a\tb"]
_SEPS = [b": ", b":", b":  ", b":\t"]
_EOLS = [b"\r\n", b"\r\n", b"\r\n", b"\n"]


_PLAIN_NAMES = [b"User-Agent", b"Accept", b"X-Id", b"Server", b"Content-Type", b"Date", b"Connection"]
_PLAIN_VALUES = [b"a", b"*/*", b"a b", b"text/plain; charset=utf-8", b"Thu, 01 Jan 2026 00:00:00 GMT", b"close",
                 b"keep-alive"]


def _fields(draw: st.DrawFn, plain: bool, names: list[bytes], values: list[bytes]) -> bytes:
    """Header fields and the empty line: `plain`, ones the scan may take (perhaps two Connections)."""
    if plain:
        names, values, seps, eol = _PLAIN_NAMES, _PLAIN_VALUES, [b": ", b":", b":  "], b"\r\n"
    else:
        seps, eol = _SEPS, draw(st.sampled_from(_EOLS))
    n = draw(st.integers(0, 5))
    parts = [draw(st.sampled_from(names)) + draw(st.sampled_from(seps)) + draw(st.sampled_from(values)) + eol
             for _ in range(n)]
    return b"".join(parts) + eol


def _pick(draw: st.DrawFn, plain: bool, usual: list[bytes], odd: list[bytes]) -> bytes:
    """One of `usual`, or when not `plain` one of either list."""
    return draw(st.sampled_from(usual if plain else usual + odd))


@st.composite
def requests(draw: st.DrawFn) -> bytes:
    """Half of them of the scan's subset but for a detail or two, half anything around it."""
    plain = draw(st.booleans())
    method = _pick(draw, plain, [b"GET", b"HEAD"], [b"POST", b"DELETE", b"get"])
    target = _pick(draw, plain, [b"/", b"/a?b=c&d=%20", b"/x/y;z=1"],
                   [b"/a b", b"http://" + HOST + b"/x", b"*", b"/\xc3\xa4"])
    version = _pick(draw, plain, [b"HTTP/1.1"], [b"HTTP/1.0", b"HTTP/2.0"])
    host = _pick(draw, plain, [b"Host: " + HOST + b"\r\n", b"Host: a:b\r\n"], [b""])
    body = _pick(draw, plain, [b""], [b"abc"])
    return method + b" " + target + b" " + version + b"\r\n" + host + _fields(draw, plain, _NAMES, _VALUES) + body


_RESPONSE_NAMES = [b"Content-Length", b"content-length", b"Content-Type", b"Server", b"Connection",
                   b"Transfer-Encoding", b"Via", b"Keep-Alive", b"X-Pod", b"Upgrade", b"Bad Name"]


@st.composite
def responses(draw: st.DrawFn) -> bytes:
    plain = draw(st.booleans())
    status = _pick(draw, plain, [b"200", b"201", b"404", b"503", b"599"], [b"204", b"304", b"100"])
    reason = _pick(draw, plain, [b" OK", b" Not Found"], [b" ", b"  OK", b" OK ", b""])
    version = _pick(draw, plain, [b"HTTP/1.1"], [b"HTTP/1.0"])
    body = draw(st.sampled_from([b"", b"ok\n", b"abcdef"]))
    length = len(body) if plain else draw(st.sampled_from([len(body), len(body) + 1, -1]))
    head = version + b" " + status + reason + b"\r\n"
    if length >= 0:
        head += b"Content-Length: " + str(length).encode() + b"\r\n"
    after = _pick(draw, plain, [b""], [b"x"])
    return head + _fields(draw, plain, _RESPONSE_NAMES, [*_VALUES, b"2"]) + body + after


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(requests(), st.sampled_from([b"", WRK_REQUEST]))
@example(WRK_REQUEST, b"")
def test_generated_requests_go_through_as_llhttp_would_send_them(data: bytes, then: bytes) -> None:
    same_both_ways([data, then] if then else [data], [NGINX_RESPONSE, NGINX_RESPONSE])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(responses(), st.sampled_from([b"", NGINX_RESPONSE]), st.booleans())
@example(NGINX_RESPONSE, b"", False)
def test_generated_responses_reach_the_client_as_llhttp_would_deliver_them(data: bytes, then: bytes,
                                                                          head: bool) -> None:
    first = b"HEAD / HTTP/1.1\r\nHost: " + HOST + b"\r\n\r\n" if head else WRK_REQUEST
    same_both_ways([first, WRK_REQUEST], [data, then] if then else [data])


# -- both builds over real sockets ----------------------------------------------------------------

def _get(addr: HostPort, data: bytes) -> bytes:
    """One request on a new connection; its response, read to the end of its Content-Length body."""
    with socket.create_connection((addr.host, addr.port), timeout=10) as s:
        s.sendall(data)
        got = b""
        while True:
            head, sep, body = got.partition(b"\r\n\r\n")
            length = re.search(rb"\r\nContent-Length: ([0-9]+)\r", head + b"\r", re.I) if sep else None
            if length is not None and len(body) >= int(length[1]):
                return got
            chunk = s.recv(65536)
            if not chunk:
                return got
            got += chunk


_VARIES = re.compile(rb"(Date|X-Proxy-Upstream-Ms|x-queue-ms|x-service-ms): [^\r]*")


def test_both_builds_answer_the_same_bytes_over_real_sockets(monkeypatch: pytest.MonkeyPatch) -> None:
    plain = b"GET /a?b=1 HTTP/1.1\r\nHost: " + HOST + b"\r\nAccept: */*\r\n\r\n"
    odd = b"GET /b HTTP/1.1\r\nHost:" + HOST + b"\r\nX-Forwarded-For: 10.1.2.3\r\n\r\n"  # llhttp's path
    answers = {}
    with Supervisor() as sup:
        _, pod = start_pod(sup, "web-0")
        for build in ("scan", "pure"):
            monkeypatch.setenv(PURE_HEADS_ENV, "1" if build == "pure" else "0")
            proxy = start_proxy(sup, [pod], "--health-interval", "0")
            answers[build] = [_VARIES.sub(rb"\1: *", _get(proxy.addr, req)) for req in (plain, odd, plain)]
    assert answers["scan"] == answers["pure"]
    assert all(a.startswith(b"HTTP/1.1 200 OK\r\n") for a in answers["scan"]), answers["scan"]
    assert all(b"\r\nVia: 1.1 lbbench\r\n" in a for a in answers["scan"])


# -- the Exchange's C twin ----------------------------------------------------------------------

def test_the_proxy_makes_its_exchanges_in_c_where_built() -> None:
    made = exchange_module.Exchange if proxy_heads() is None else _heads.Exchange  # LBBENCH_PURE_HEADS=1
    assert request_module.new_exchange is made  # what RequestReader.on_message_begin calls
    assert exchange_module.Exchange is not _heads.Exchange


def test_the_c_exchange_is_the_class_twin() -> None:
    """Same attributes (slots of the same kind), same defaults of the same types, same constructor."""
    native, pure = _heads.Exchange, exchange_module.Exchange
    members = {k for k, v in vars(native).items() if isinstance(v, types.MemberDescriptorType)}
    assert members == set(pure.__slots__)
    client = object()
    for make in (lambda cls: cls(client), lambda cls: cls(client=client)):
        c, p = make(native), make(pure)
        for name in pure.__slots__:
            got, want = getattr(c, name), getattr(p, name)
            assert (type(got), got) == (type(want), want), name
        assert c.client is client and c.out is not make(native).out  # a list of its own
    for args, kwargs in (((), {}), ((1, 2), {}), ((), {"other": 1}), ((1,), {"client": 1})):
        for cls in (native, pure):
            with pytest.raises(TypeError):
                cls(*args, **kwargs)
    ex = native(client)
    ex.state, ex.out_bytes = 4, 10
    assert (ex.state, ex.out_bytes) == (4, 10)
    del ex.reject
    with pytest.raises(AttributeError):
        ex.reject  # noqa: B018 (a deleted slot, as the class's)
    with pytest.raises(AttributeError):
        ex.unknown = 1  # type: ignore[attr-defined]


def test_c_exchanges_give_back_every_reference() -> None:
    """Made and dropped, with their slots changed meanwhile: no reference kept to the defaults, the client
    or a value set (a missing decref in the C type would show as a growing count)."""
    client, value = object(), object()
    first = _heads.Exchange(client)
    defaults = [getattr(first, name) for name in exchange_module.Exchange.__slots__]
    before = [sys.getrefcount(o) for o in (client, value, *defaults)]
    for _ in range(1000):
        ex = _heads.Exchange(client)
        ex.pool = ex.backend = value
        ex.state = ex.status
        del ex
    assert [sys.getrefcount(o) for o in (client, value, *defaults)] == before


def test_a_c_exchange_in_a_reference_cycle_is_collected() -> None:
    """The type takes part in the cyclic GC: an Exchange and its client refer to each other."""
    gone: list[str] = []

    class Client:
        current: Any = None

        def __del__(self) -> None:
            gone.append("client")

    c = Client()
    c.current = _heads.Exchange(c)
    c.current.out.append(c)
    del c
    gc.collect()
    assert gone == ["client"]
