"""Header handling of the L7 proxy, byte for byte, and the caches that make the common case cheap.

A scripted raw backend (a blocking socket server in a thread) records every request head the
proxy sends and answers with the next scripted response, so the rewriting is checked on exact
bytes: hop-by-hop fields in any spelling, fields a Connection header declares (before or after
it), X-Forwarded-For and Via extended, framing for HTTP/1.0 and 1.1 clients, status classes.
"""

from __future__ import annotations

import random
import re
import socket
import threading
import time
from collections.abc import Iterator

import pytest
from helpers.proxy import get_stats, parse_responses, start_proxy

from lbbench.cluster.standalone import fresh_ip
from lbbench.frontends.proxy import route as proxy_route
from lbbench.frontends.proxy.backend import Backend
from lbbench.frontends.proxy.balance import RoundRobin
from lbbench.frontends.proxy.route import Router
from lbbench.model.addresses import HostPort
from lbbench.model.service import Endpoint
from lbbench.system.procs import Supervisor

NO_CHECKS = ("--health-interval", "0", "--maxconn", "0")  # no probe may take a scripted answer


class ScriptedBackend:
    """Answers each request head with the next scripted (response, close-after) pair, in order,
    `delay_s` after the head arrived."""

    def __init__(self, script: list[tuple[bytes, bool]], delay_s: float = 0.0) -> None:
        self.script = list(script)
        self.delay_s = delay_s
        self.connections = 0  # accepted so far
        self.requests: list[bytes] = []
        self.sock = socket.create_server((fresh_ip(), 0))
        host, port = self.sock.getsockname()[:2]
        self.addr = HostPort(host, port)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while self.script:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return  # closed by the test
            self.connections += 1
            with conn:
                self._answer(conn)

    def _answer(self, conn: socket.socket) -> None:
        buf = b""
        while self.script:
            while b"\r\n\r\n" not in buf:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                buf += chunk
            head, _, buf = buf.partition(b"\r\n\r\n")
            self.requests.append(head + b"\r\n\r\n")
            response, close = self.script.pop(0)
            time.sleep(self.delay_s)
            conn.sendall(response)
            if close:
                return

    def close(self) -> None:
        self.sock.close()
        self.thread.join(5)


@pytest.fixture
def backend_factory() -> Iterator[list[ScriptedBackend]]:
    made: list[ScriptedBackend] = []
    yield made
    for b in made:
        b.close()


_UPSTREAM_MS = re.compile(rb"X-Proxy-Upstream-Ms: ([0-9]+\.[0-9]{3})\r\n")


def _exchange(addr: HostPort, data: bytes, source_ip: str) -> bytes:
    """Send `data` from `source_ip`, return everything until the proxy closes.

    The proxy's timing header varies: each is checked to be a plausible time and replaced by `T`.
    """
    out = b""
    with socket.create_connection((addr.host, addr.port), timeout=5, source_address=(source_ip, 0)) as s:
        s.sendall(data)
        while chunk := s.recv(65536):
            out += chunk
    for ms in _UPSTREAM_MS.findall(out):
        assert 0.0 <= float(ms) < 5000.0, ms
    return _UPSTREAM_MS.sub(b"X-Proxy-Upstream-Ms: T\r\n", out)


def test_request_and_response_heads_are_rewritten_exactly(supervisor: Supervisor,
                                                          backend_factory: list[ScriptedBackend]) -> None:
    backend = ScriptedBackend([
        (b"HTTP/1.1 200 OK\r\nX-Drop: 1\r\nconnection: X-Drop, keep-alive\r\nCONTENT-length: 2\r\n"
         b"Via: 1.0 a\r\nx-drop: 2\r\nProxy-Authenticate: x\r\nX-Keep: k\r\n\r\nhi", False),
        (b"HTTP/1.1 200 OK\r\nx-keep: again\r\nContent-Length: 2\r\n\r\nok", False),
    ])
    backend_factory.append(backend)
    px = start_proxy(supervisor, [backend.addr], *NO_CHECKS)
    client_ip = fresh_ip()
    first = (b"GET /a?b=1 HTTP/1.1\r\nhOsT: svc\r\nX-Secret: s1\r\nconnection: keep-alive, X-Secret, Host\r\n"
             b"x-secret: s2\r\nX-FORWARDED-FOR: 10.0.0.1\r\nvia: 1.0 edge\r\nTE: trailers\r\nKeep-Alive: 5\r\n"
             b"X-Keep: k\r\n\r\n")
    second = b"GET /two HTTP/1.1\r\nHost: svc\r\nConnection: close\r\n\r\n"
    got = _exchange(px.addr, first + second, client_ip)
    ip = client_ip.encode()
    # Declared fields go in any spelling, wherever they stand; Host is never dropped.
    assert backend.requests == [
        b"GET /a?b=1 HTTP/1.1\r\nhOsT: svc\r\nX-Keep: k\r\nX-Forwarded-For: 10.0.0.1, " + ip
        + b"\r\nVia: 1.0 edge, 1.1 lbbench\r\n\r\n",
        b"GET /two HTTP/1.1\r\nHost: svc\r\nX-Forwarded-For: " + ip + b"\r\nVia: 1.1 lbbench\r\n\r\n",
    ]
    assert got == (
        b"HTTP/1.1 200 OK\r\nCONTENT-length: 2\r\nX-Keep: k\r\nVia: 1.0 a, 1.1 lbbench\r\n"
        b"X-Proxy-Queue-Ms: 0.000\r\nX-Proxy-Upstream-Ms: T\r\n\r\nhi"
        b"HTTP/1.1 200 OK\r\nx-keep: again\r\nContent-Length: 2\r\nVia: 1.1 lbbench\r\n"
        b"X-Proxy-Queue-Ms: 0.000\r\nX-Proxy-Upstream-Ms: T\r\nConnection: close\r\n\r\nok")


def test_framing_for_http10_and_11_clients_and_status_classes(supervisor: Supervisor,
                                                              backend_factory: list[ScriptedBackend]) -> None:
    backend = ScriptedBackend([
        (b"HTTP/1.1 200 OK\r\nX-A: 1\r\n\r\nuntil close", True),  # close-delimited -> chunked for 1.1
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n", False),  # -> 1.0 client
        (b"HTTP/1.1 799 Odd\r\nContent-Length: 0\r\n\r\n", False),
        (b"HTTP/1.1 503 Busy\r\nContent-Length: 0\r\n\r\n", False),
    ])
    backend_factory.append(backend)
    px = start_proxy(supervisor, [backend.addr], *NO_CHECKS, "--eject-after", "0")
    client_ip = fresh_ip()
    ip = client_ip.encode()

    chunked = _exchange(px.addr, b"GET /c HTTP/1.1\r\nHost: svc\r\nConnection: close\r\n\r\n", client_ip)
    head = chunked.partition(b"\r\n\r\n")[0]
    assert head == (b"HTTP/1.1 200 OK\r\nX-A: 1\r\nVia: 1.1 lbbench\r\nX-Proxy-Queue-Ms: 0.000\r\n"
                    b"X-Proxy-Upstream-Ms: T\r\n"
                    b"Transfer-Encoding: chunked\r\nConnection: close")
    (reply,) = parse_responses(chunked)
    assert reply.body == b"until close"

    old = _exchange(px.addr, b"GET /ten HTTP/1.0\r\n\r\n", client_ip)
    assert old == (b"HTTP/1.0 200 OK\r\nVia: 1.1 lbbench\r\nX-Proxy-Queue-Ms: 0.000\r\nX-Proxy-Upstream-Ms: T\r\n"
                   b"Connection: close\r\n\r\nabc")
    assert backend.requests[1] == (b"GET /ten HTTP/1.1\r\nHost: default.default.svc.cluster.local\r\n"
                                   b"X-Forwarded-For: " + ip + b"\r\nVia: 1.0 lbbench\r\n\r\n")

    both = _exchange(px.addr, b"GET /o HTTP/1.1\r\nHost: svc\r\n\r\nGET /b HTTP/1.1\r\nHost: svc\r\n"
                              b"Connection: close\r\n\r\n", client_ip)
    assert [r.status for r in parse_responses(both)] == [799, 503]
    totals = get_stats(px.stats)["totals"]
    assert totals["responses_2xx"] == 2 and totals["responses_other"] == 1 and totals["responses_5xx"] == 1
    assert totals["client_requests"] == totals["requests"] == 4


def _reference_route(rules: list[tuple[str, str, int]], host: bytes, path: bytes) -> int | None:
    """Ingress matching written plainly: exact host, then longest wildcard suffix, then `*`; longest prefix."""
    name = proxy_route.normalize_host(host)
    groups: list[list[tuple[str, str, int]]] = [[r for r in rules if r[0] == name.decode()]]
    wild = sorted({r[0] for r in rules if r[0].startswith("*.")}, key=len, reverse=True)
    groups += [[r for r in rules if r[0] == w] for w in wild if name.decode().endswith(w[1:])
               and len(name) > len(w) - 1]
    groups.append([r for r in rules if r[0] == "*"])
    for group in groups:
        for _, prefix, target in sorted(group, key=lambda r: len(r[1].rstrip("/")), reverse=True):
            p = prefix.rstrip("/").encode()
            if not p or path == p or path.startswith(p + b"/"):
                return target
    return None


def test_router_caches_never_change_the_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(proxy_route, "_CACHE_MAX", 8)  # exercise eviction too
    rules = [("shop.example", "/", 1), ("shop.example", "/api", 2), ("*.example", "/", 3), ("api.test", "/v1", 4),
             ("*", "/static", 5)]
    router = Router(rules)
    rng = random.Random(7)
    hosts = [b"shop.example", b"SHOP.example:8080", b"a.example", b"example", b"api.test", b"other", b"b.a.example"]
    paths = [b"/", b"/api", b"/api/v1", b"/apiary", b"/v1/x", b"/static/app.js", b"/x"]
    for _ in range(500):
        host, path = rng.choice(hosts), rng.choice(paths)
        assert router.route(host, path + b"?q=1") == _reference_route(rules, host, path), (host, path)


def test_round_robin_keeps_its_turn_when_the_backends_change() -> None:
    backends = [Backend(Endpoint(f"p{i}", f"127.0.0.{10 + i}", 80), 0) for i in range(4)]
    rr = RoundRobin(random.Random(0))
    assert [rr.pick(backends, ()) for _ in range(5)] == [*backends, backends[0]]
    fewer = backends[:2]  # p2 and p3 removed: the turn wraps within the new list
    assert [rr.pick(fewer, ()) for _ in range(3)] == [fewer[1], fewer[0], fewer[1]]
    backends[0].in_flight = backends[0].maxconn = 1  # full: skipped
    assert rr.pick(backends, (backends[1],)) in backends[2:]
    assert rr.pick([], ()) is None


OK_HI = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi"
OK_OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


def test_bytes_after_a_complete_response_end_that_backend_connection(supervisor: Supervisor,
                                                                     backend_factory: list[ScriptedBackend]) -> None:
    """A backend that sends more than the response (here the start of another) in the same write: the
    response stands, the connection is out of step and goes; the next request gets a clean one. A
    backend that sends just its responses keeps its one connection."""
    for extra, connections in ((b"", 1), (b"HTTP/1.1 2", 2)):
        backend = ScriptedBackend([(OK_HI + extra, False), (OK_OK, False)])
        backend_factory.append(backend)
        px = start_proxy(supervisor, [backend.addr], *NO_CHECKS)
        client_ip = fresh_ip()
        first = _exchange(px.addr, b"GET /1 HTTP/1.1\r\nHost: svc\r\nConnection: close\r\n\r\n", client_ip)
        second = _exchange(px.addr, b"GET /2 HTTP/1.1\r\nHost: svc\r\nConnection: close\r\n\r\n", client_ip)
        assert [(r.status, r.body) for r in parse_responses(first)] == [(200, b"hi")]
        assert [(r.status, r.body) for r in parse_responses(second)] == [(200, b"ok")]  # not a 502 from "HTTP/1.1 2"
        assert backend.connections == connections, extra


def test_a_stale_response_never_reaches_the_request_queued_behind(supervisor: Supervisor,
                                                                  backend_factory: list[ScriptedBackend]) -> None:
    """maxconn 1, two clients: the second waits in the queue. The backend answers the first with its response
    and a whole second one in the same write. Releasing the first's slot hands the connection to the
    queued request at once; the stale bytes must not become its answer."""
    stale = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nstale"
    backend = ScriptedBackend([(OK_HI + stale, False), (OK_OK, False)], delay_s=0.3)
    backend_factory.append(backend)
    px = start_proxy(supervisor, [backend.addr], "--health-interval", "0", "--maxconn", "1")
    client_ip = fresh_ip()
    got: dict[str, bytes] = {}

    def one(name: str) -> None:
        got[name] = _exchange(px.addr, f"GET /{name} HTTP/1.1\r\nHost: svc\r\nConnection: close\r\n\r\n".encode(),
                              client_ip)

    a = threading.Thread(target=one, args=("a",))
    a.start()
    time.sleep(0.1)  # a's request holds the one slot (the backend answers 0.3 s after it arrived)
    one("b")
    a.join(10)
    assert [(r.status, r.body) for r in parse_responses(got["a"])] == [(200, b"hi")]
    assert [(r.status, r.body) for r in parse_responses(got["b"])] == [(200, b"ok")]
    assert [r.split(b"\r\n")[0] for r in backend.requests] == [b"GET /a HTTP/1.1", b"GET /b HTTP/1.1"]
