"""Hostile clients: malformed input, oversized heads and bodies, slowloris, overload, random bytes.

The tests share one proxy, and each checks after itself that the proxy kept serving and that its
abuse left nothing in flight, so that they pass alone and in any order. Nothing here asserts
speed: time appears only as lower bounds (a timeout does not fire early) and as bounds on how
long a test waits for something that must happen.
"""

from __future__ import annotations

import concurrent.futures
import select
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from helpers.proxy import (
    ProxyProcess,
    get_stats,
    parse_responses,
    raw_conversation,
    raw_exchange,
    request_bytes,
    start_proxy,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lbbench.cluster.standalone import start_pod
from lbbench.frontends.base import FrontendPlan
from lbbench.frontends.proxy.config import plan_to_json
from lbbench.model.service import IngressRule, ServiceSpec
from lbbench.system.procs import Supervisor

LIMITS = ("--max-header-bytes", "4096", "--max-headers", "20", "--max-body-bytes", "10000",
          "--client-timeout", "1.0")


@pytest.fixture(scope="module")
def shared_proxy() -> Iterator[ProxyProcess]:
    with Supervisor() as sup:
        _, pod = start_pod(sup, "target")
        yield start_proxy(sup, [pod], *LIMITS)


@pytest.fixture
def proxy(shared_proxy: ProxyProcess) -> Iterator[ProxyProcess]:
    """The module's proxy; after the test: still serving, and nothing of the test left in flight."""
    yield shared_proxy
    _still_serving(shared_proxy)
    _nothing_in_flight(shared_proxy)


def _nothing_in_flight(px: ProxyProcess) -> None:
    """Every request the proxy admitted was answered or withdrawn, every connection closed."""
    deadline = time.monotonic() + 10.0  # lingering closes end within LINGER_S, idle ones at client_timeout
    while (stats := get_stats(px.stats))["client_connections"] and time.monotonic() < deadline:
        time.sleep(0.1)
    totals = stats["totals"]
    assert totals["in_flight_total"] == 0 and totals["queue_len"] == 0
    assert all(b["in_flight"] == 0 for b in stats["services"]["default/default"]["backends"])
    assert stats["client_connections"] == 0


def _status_and_closed(px: ProxyProcess, data: bytes, timeout_s: float = 5.0) -> tuple[int, bool, bytes]:
    """Status of the only response, and whether the proxy closed the connection after it."""
    raw, closed = raw_conversation(px.addr, data, timeout_s=timeout_s)
    replies = parse_responses(raw)
    return (replies[0].status if replies else 0), closed, replies[0].body if replies else raw


def _still_serving(px: ProxyProcess) -> None:
    (reply,) = parse_responses(raw_exchange(px.addr, request_bytes("/", headers=[("Connection", "close")])))
    assert reply.status == 200 and reply.headers["x-pod"] == "target"


@pytest.mark.parametrize("data", [
    b"GARBAGE\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nBad Header Line\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello",
    b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nZZ\r\nhello\r\n0\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    b"GET /\x00 HTTP/1.1\r\n\r\n",
])
def test_malformed_requests_get_400_and_close(proxy: ProxyProcess, data: bytes) -> None:
    status, closed, _ = _status_and_closed(proxy, data)
    assert (status, closed) == (400, True)


def test_limits_431_413_501_505(proxy: ProxyProcess) -> None:
    before = get_stats(proxy.stats)["totals"]
    big_head = request_bytes("/", headers=[("X-Big", "a" * 5000)])
    assert _status_and_closed(proxy, big_head)[:2] == (431, True)
    many = request_bytes("/", headers=[(f"X-{i}", "v") for i in range(25)])
    assert _status_and_closed(proxy, many)[:2] == (431, True)
    slow_big_head = request_bytes("/", headers=[("X-Big", "a" * 5000)])[:-2]  # never ends
    assert _status_and_closed(proxy, slow_big_head)[:2] == (431, True)
    declared = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000000\r\n\r\n"
    status, closed, body = _status_and_closed(proxy, declared)
    assert (status, closed) == (413, True) and b"10000 bytes" in body
    chunked = (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
               + b"".join(b"1000\r\n" + b"z" * 4096 + b"\r\n" for _ in range(4)) + b"0\r\n\r\n")
    assert _status_and_closed(proxy, chunked)[:2] == (413, True)
    upgrade = request_bytes("/", headers=[("Connection", "Upgrade"), ("Upgrade", "websocket")])
    assert _status_and_closed(proxy, upgrade)[:2] == (501, True)
    assert _status_and_closed(proxy, b"GET / HTTP/2.0\r\nHost: x\r\n\r\n")[:2] == (505, True)
    after = get_stats(proxy.stats)["totals"]
    for key, count in (("client_error_431", 3), ("client_error_413", 2), ("client_error_501", 1)):
        assert after[key] - before.get(key, 0) == count, key


def _slowloris(px: ProxyProcess, stop: threading.Event, results: list[tuple[float, bytes]]) -> None:
    """Send a request head one byte every 0.1 s; note when the proxy answers or hangs up."""
    head = request_bytes("/", headers=[("X-Slow", "y" * 200)])
    t0 = time.monotonic()
    with socket.create_connection((px.addr.host, px.addr.port), timeout=5) as s:
        try:
            for b in head:
                if stop.is_set():
                    break
                s.sendall(bytes([b]))
                if select.select([s], [], [], 0.1)[0]:
                    results.append((time.monotonic() - t0, s.recv(65536)))
                    return
            results.append((time.monotonic() - t0, b"the whole head went through"))
        except OSError as e:
            results.append((time.monotonic() - t0, str(e).encode()))


SLOWLORIS = 40


def test_slowloris_times_out_and_others_are_served(supervisor: Supervisor) -> None:
    """40 clients sending a head byte by byte: others are served while they hang on, and each is
    cut with a 408 at the client timeout, long before its head would have ended (23 s)."""
    _, pod = start_pod(supervisor, "target")
    client_timeout_s = 5.0
    px = start_proxy(supervisor, [pod], *LIMITS[:-2], "--client-timeout", str(client_timeout_s))
    stop = threading.Event()
    results: list[tuple[float, bytes]] = []
    threads = [threading.Thread(target=_slowloris, args=(px, stop, results)) for _ in range(SLOWLORIS)]
    for t in threads:
        t.start()
    try:
        served_among_them = False
        give_up = time.monotonic() + client_timeout_s
        while not served_among_them and time.monotonic() < give_up:
            # Open before and after the request: the slow clients were all there while it was served.
            if get_stats(px.stats)["client_connections"] < SLOWLORIS:
                time.sleep(0.05)  # not all connected yet
                continue
            _still_serving(px)
            served_among_them = get_stats(px.stats)["client_connections"] >= SLOWLORIS
        assert served_among_them
        for t in threads:
            t.join(60)
    finally:
        stop.set()
    assert len(results) == SLOWLORIS
    for elapsed, answer in results:
        assert elapsed >= 0.9 * client_timeout_s, elapsed  # a timeout never fires early
        assert answer.startswith(b"HTTP/1.1 408 Request Timeout"), answer  # cut before the head ended
    assert get_stats(px.stats)["totals"]["client_timeouts"] == SLOWLORIS


def test_idle_keepalive_connection_is_closed_after_client_timeout(proxy: ProxyProcess) -> None:
    with socket.create_connection((proxy.addr.host, proxy.addr.port), timeout=10) as s:
        s.sendall(request_bytes("/"))
        first = b""
        while not first.endswith(b"ok\n"):
            first += s.recv(65536)
        assert first.startswith(b"HTTP/1.1 200")
        t0 = time.monotonic()
        assert s.recv(65536) == b""  # closed, silently: no request was in progress (else a timeout error)
        assert time.monotonic() - t0 >= 0.8  # at the client timeout (1 s), not before


def test_thousands_of_pipelined_requests_answered_by_the_proxy_itself(supervisor: Supervisor,
                                                                       tmp_path: Path) -> None:
    """One slow request, then 3000 pipelined ones the proxy answers itself (404, no route): all in order."""
    _, pod = start_pod(supervisor, "one")
    plan = tmp_path / "plan.json"
    plan.write_text(plan_to_json(FrontendPlan(
        (ServiceSpec("web", "ns", "ClusterIP", "127.96.0.1", 80, 8080),),
        ingress_rules=(IngressRule("web.example", "/", "ns/web"),))))
    px = start_proxy(supervisor, [pod], "--plan", str(plan))
    n = 3000
    burst = (request_bytes("/?delay=300ms:100", host="web.example") + request_bytes("/", host="nowhere") * n
             + request_bytes("/", host="web.example", headers=[("Connection", "close")]))
    replies = parse_responses(raw_exchange(px.addr, burst, timeout_s=20))
    assert [r.status for r in replies] == [200] + [404] * n + [200]


def test_overload_is_refused_by_the_bounded_queue_with_memory_bounded(supervisor: Supervisor) -> None:
    _, pod = start_pod(supervisor, "busy", service="const:50ms")
    px = start_proxy(supervisor, [pod], "--maxconn", "1", "--max-queue", "20", "--queue-timeout", "5")
    rss_before = psutil.Process(px.child.pid).memory_info().rss
    req = request_bytes("/", headers=[("Connection", "close")])

    def one(_: int) -> int:
        replies = parse_responses(raw_exchange(px.addr, req, timeout_s=15))
        return replies[0].status if replies else 0

    with concurrent.futures.ThreadPoolExecutor(100) as ex:
        statuses = list(ex.map(one, range(400)))
    assert set(statuses) <= {200, 503}
    assert statuses.count(503) >= 200  # most were refused at once rather than piling up
    totals = get_stats(px.stats)["totals"]
    assert totals["queue_full"] == statuses.count(503)
    assert totals["queue_len"] == 0
    assert psutil.Process(px.child.pid).memory_info().rss - rss_before < 30 * 1024 * 1024
    (reply,) = parse_responses(raw_exchange(px.addr, req))
    assert reply.status == 200


_HTTPISH = st.one_of(
    st.binary(max_size=300),
    st.lists(st.sampled_from([b"GET ", b"POST ", b"/", b"?a=1", b" HTTP/1.1", b"\r\n", b"Host: x", b": ",
                              b"Content-Length: ", b"Transfer-Encoding: chunked", b"5", b"\r\n\r\n", b"0",
                              b"\x00", b"\xff", b" ", b"\t", b"Connection: close", b"hello"]),
             max_size=40).map(b"".join),
    st.tuples(st.sampled_from([  # a valid request, then anything: pipelining into garbage
        request_bytes("/"), request_bytes("/?delay=20ms:100"), request_bytes("/", method="POST", body=b"abc"),
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n",
    ]), st.binary(max_size=200)).map(b"".join),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=_HTTPISH)
def test_random_bytes_never_stop_the_proxy(proxy: ProxyProcess, data: bytes) -> None:
    raw_exchange(proxy.addr, data, timeout_s=3.0, shut_write=True)
    _still_serving(proxy)
