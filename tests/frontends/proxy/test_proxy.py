"""The L7 proxy as an HTTP/1.1 intermediary: forwarding, keep-alive, streaming, headers, routing, balancing."""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import socket
import threading
import time
import urllib.request
from collections.abc import Iterator

import psutil
import pytest
from aiohttp import web
from helpers.proxy import (
    get_stats,
    parse_responses,
    raw_exchange,
    request_bytes,
    start_proxy,
)

from lbbench.cluster.standalone import fresh_ip, start_pod
from lbbench.frontends.proxy.backend import Backend
from lbbench.frontends.proxy.balance import make_balancer
from lbbench.frontends.proxy.route import Router, normalize_host
from lbbench.model.addresses import HostPort
from lbbench.model.service import Endpoint
from lbbench.system.procs import Supervisor


async def _echo(request: web.Request) -> web.StreamResponse:
    body = await request.read()
    if "chunks" in request.query:
        resp = web.StreamResponse()
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        for _ in range(int(request.query["chunks"])):
            await resp.write(b"x" * int(request.query.get("size", "1000")))
        await resp.write_eof()
        return resp
    return web.json_response({
        "method": request.method, "path": request.path_qs,
        "headers": [[k.decode(), v.decode()] for k, v in request.raw_headers],
        "body_len": len(body), "body_md5": hashlib.md5(body).hexdigest(),
    })


@pytest.fixture
def echo() -> Iterator[HostPort]:
    """An aiohttp backend in a thread that answers with what it received."""
    addr = HostPort(fresh_ip(), 8080)
    loop = asyncio.new_event_loop()
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_route("*", "/{tail:.*}", _echo)
    runner = web.AppRunner(app, access_log=None)
    loop.run_until_complete(runner.setup())
    loop.run_until_complete(web.TCPSite(runner, addr.host, addr.port).start())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield addr
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.run_until_complete(runner.cleanup())
        loop.close()


def _echoed_headers(body: bytes) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for k, v in json.loads(body)["headers"]:
        out.setdefault(k.lower(), []).append(v)
    return out


def test_forwards_keepalive_with_proxy_headers_and_without_hop_by_hop(supervisor: Supervisor,
                                                                      echo: HostPort) -> None:
    px = start_proxy(supervisor, [echo])
    req = request_bytes("/one?x=1", headers=[
        ("Connection", "keep-alive, X-Secret"), ("X-Secret", "hop"), ("Keep-Alive", "timeout=5"),
        ("TE", "trailers"), ("X-Forwarded-For", "10.9.9.9"), ("Via", "1.0 edge"), ("X-Keep", "me")])
    data = raw_exchange(px.addr, req + request_bytes("/two", headers=[("Connection", "close")]))
    first, second = parse_responses(data)
    assert first.status == second.status == 200
    seen = _echoed_headers(first.body)
    assert json.loads(first.body)["path"] == "/one?x=1"
    assert json.loads(second.body)["path"] == "/two"
    for hop in ("x-secret", "keep-alive", "te", "connection"):
        assert hop not in seen, hop
    assert seen["x-keep"] == ["me"]
    assert seen["x-forwarded-for"] == [f"10.9.9.9, {px.addr.host}"] or seen["x-forwarded-for"][0].startswith(
        "10.9.9.9, 127.")
    assert seen["via"] == ["1.0 edge, 1.1 lbbench"]
    assert "lbbench" in first.headers["via"]
    assert "x-proxy-queue-ms" in first.headers
    assert second.headers.get("connection") == "close"


def test_streams_large_bodies_both_ways(supervisor: Supervisor, echo: HostPort) -> None:
    px = start_proxy(supervisor, [echo])
    body = random.Random(1).randbytes(3 * 1024 * 1024 + 7)
    md5 = hashlib.md5(body).hexdigest()
    for framing in ("length", "chunked"):
        if framing == "length":
            req = request_bytes("/up", method="POST", body=body, headers=[("Connection", "close")])
        else:
            chunks = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in (body[i:i + 100_000]
                                                                    for i in range(0, len(body), 100_000)))
            req = (b"POST /up HTTP/1.1\r\nHost: svc\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n"
                   + chunks + b"0\r\n\r\n")
        (reply,) = parse_responses(raw_exchange(px.addr, req, timeout_s=20))
        assert reply.status == 200, framing
        assert json.loads(reply.body)["body_len"] == len(body)
        assert json.loads(reply.body)["body_md5"] == md5
    (big,) = parse_responses(raw_exchange(px.addr, request_bytes(
        "/down?chunks=200&size=65536", headers=[("Connection", "close")]), timeout_s=20))
    assert big.status == 200
    assert len(big.body) == 200 * 65536
    assert big.headers["transfer-encoding"] == "chunked"


def test_slow_reader_pauses_the_backend_instead_of_filling_memory(supervisor: Supervisor, echo: HostPort) -> None:
    px = start_proxy(supervisor, [echo])
    proc = psutil.Process(px.child.pid)
    rss_before = proc.memory_info().rss
    size = 1280 * 65536  # 80 MiB, far more than the socket buffers of both hops hold
    with socket.create_connection((px.addr.host, px.addr.port), timeout=10) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        s.sendall(request_bytes("/?chunks=1280&size=65536", headers=[("Connection", "close")]))
        time.sleep(1.5)  # not reading: the proxy must stop reading the backend
        grown = proc.memory_info().rss - rss_before
        received = 0
        while chunk := s.recv(1 << 20):
            received += len(chunk)
    assert grown < 16 * 1024 * 1024, grown
    assert received > size


def test_backend_that_does_not_read_pauses_the_client_upload(supervisor: Supervisor) -> None:
    with socket.create_server((fresh_ip(), 8080)) as deaf:  # accepts (in the kernel), never reads
        host, port = deaf.getsockname()[:2]
        px = start_proxy(supervisor, [HostPort(host, port)], "--health-interval", "0")
        proc = psutil.Process(px.child.pid)
        rss_before = proc.memory_info().rss
        body = b"u" * (60 * 1024 * 1024)
        sent = [0]

        def upload() -> None:
            with socket.create_connection((px.addr.host, px.addr.port), timeout=3) as s:
                s.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body))
                view = memoryview(body)
                try:
                    while sent[0] < len(body):
                        sent[0] += s.send(view[sent[0]:sent[0] + 65536])
                except OSError:
                    pass  # timed out: the proxy stopped reading

        t = threading.Thread(target=upload)
        t.start()
        t.join(10)
        assert sent[0] < len(body) // 2  # the upload was held back...
        assert proc.memory_info().rss - rss_before < 16 * 1024 * 1024  # ...not buffered in the proxy


def test_pipelined_requests_are_answered_in_order(supervisor: Supervisor, echo: HostPort) -> None:
    px = start_proxy(supervisor, [echo])
    paths = [f"/p{i}" for i in range(5)]
    req = b"".join(request_bytes(p) for p in paths[:-1]) + request_bytes(
        paths[-1], headers=[("Connection", "close")])
    replies = parse_responses(raw_exchange(px.addr, req))
    assert [json.loads(r.body)["path"] for r in replies] == paths


def test_http10_client_and_head_and_expect_continue(supervisor: Supervisor, echo: HostPort) -> None:
    px = start_proxy(supervisor, [echo])
    data = raw_exchange(px.addr, b"GET /old HTTP/1.0\r\n\r\n")
    assert data.startswith(b"HTTP/1.0 200")
    head = raw_exchange(px.addr, request_bytes("/h", method="HEAD", headers=[("Connection", "close")]))
    assert head.startswith(b"HTTP/1.1 200") and head.endswith(b"\r\n\r\n")  # no body after the head
    with socket.create_connection((px.addr.host, px.addr.port), timeout=5) as s:
        s.sendall(b"POST /e HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
        assert s.recv(100).startswith(b"HTTP/1.1 100 Continue")
        s.sendall(b"hello")
        reply = b""
        while b"body_len" not in reply:
            reply += s.recv(65536)
        assert b'"body_len": 5' in reply


def test_balancing_spreads_over_pods_and_stats_count_it(supervisor: Supervisor) -> None:
    pods = [start_pod(supervisor, f"b{i}")[1] for i in range(3)]
    px = start_proxy(supervisor, pods, "--balance", "round-robin", "--maxconn", "0")
    req = b"".join(request_bytes("/") for _ in range(8)) + request_bytes("/", headers=[("Connection", "close")])
    replies = parse_responses(raw_exchange(px.addr, req))
    assert [r.status for r in replies] == [200] * 9
    assert sorted({r.headers["x-pod"] for r in replies}) == ["b0", "b1", "b2"]
    stats = get_stats(px.stats)
    backends = stats["services"]["default/default"]["backends"]
    assert sorted(b["requests"] for b in backends) == [3, 3, 3]
    assert stats["totals"]["responses_2xx"] == 9
    with urllib.request.urlopen(f"http://{px.stats}/metrics", timeout=5) as r:
        metrics = r.read().decode()
    assert "# TYPE lbbench_proxy_queue_length gauge" in metrics
    assert 'lbbench_proxy_client_events_total{event="responses_2xx"} 9' in metrics
    assert metrics.count("lbbench_proxy_backend_requests_total{") == 3


def _backend(name: str, in_flight: int = 0, maxconn: int = 0) -> Backend:
    b = Backend(Endpoint(name, "127.0.0.1", 1), maxconn)
    b.in_flight = in_flight
    return b


def test_balancers_choose_by_their_rule() -> None:
    rng = random.Random(0)
    a, b, c = _backend("a"), _backend("b", in_flight=5), _backend("c", in_flight=1, maxconn=1)
    rr = make_balancer("round-robin", rng)
    assert [rr.pick([a, b, c], ()) for _ in range(4)] == [a, b, a, b]  # c is full
    assert make_balancer("least-conn", rng).pick([a, b, c], ()) is a
    p2c = make_balancer("p2c", rng)
    assert all(p2c.pick([a, b], ()) is a for _ in range(20))  # the two choices are a and b
    assert make_balancer("random", rng).pick([a, b, c], [a]) is b  # redispatch avoids the tried one
    assert make_balancer("random", rng).pick([a], [a]) is a  # ... unless it is the only one
    a.ewma_s, b.ewma_s, b.in_flight = 0.050, 0.001, 0
    assert make_balancer("peak-ewma", rng).pick([a, b], ()) is b
    b.down = True
    b.refresh()
    assert make_balancer("least-conn", rng).pick([b], ()) is None
    with pytest.raises(ValueError, match="unknown balance"):
        make_balancer("fastest", rng)


def _round_robin_rule(turn: int, backends: list[Backend], exclude: list[Backend]) -> tuple[Backend | None, int]:
    """Round-robin as documented: the first eligible backend from the turn on, wrapping, that was not
    tried; else the first eligible tried one (the turn then stays). Returns the choice and the next turn."""
    fallback = None
    for k in range(len(backends)):
        j = (turn + k) % len(backends)  # the turn is kept as it was counted, and wraps in the list as it is now
        b = backends[j]
        if b.usable and (b.maxconn == 0 or b.in_flight < b.maxconn):
            if b not in exclude:
                return b, j + 1
            fallback = fallback or b
    return fallback, turn


def test_round_robin_follows_its_rule_in_any_state() -> None:
    """Its common case (the backend in turn has room) is taken before the loop: both must keep the rule."""
    rng = random.Random(5)
    pool = [_backend(f"p{i}") for i in range(6)]
    rr, turn = make_balancer("round-robin", rng), 0
    for _ in range(3000):
        backends = rng.sample(pool, rng.randint(0, len(pool)))  # the Endpoints list changes too
        for b in backends:
            b.maxconn = rng.choice((0, 1, 2))
            b.in_flight = rng.randint(0, 2)
            b.down = rng.random() < 0.2
            b.refresh()
        exclude = rng.sample(backends, rng.randint(0, len(backends))) if rng.random() < 0.3 else []
        want, turn = _round_robin_rule(turn, backends, exclude)
        assert rr.pick(backends, exclude) is want


def test_peak_ewma_learns_latency_from_the_responses(supervisor: Supervisor) -> None:
    """The proxy feeds each response's latency to the backend's peak EWMA (for this balancer only):
    a pod 60 ms slow gets a request or two while the EWMAs learn, then the fast one gets the rest."""
    slow = start_pod(supervisor, "slow", service="const:60ms")[1]
    fast = start_pod(supervisor, "fast")[1]
    px = start_proxy(supervisor, [slow, fast], "--balance", "peak-ewma", "--maxconn", "0", "--health-interval", "0")
    req = b"".join(request_bytes("/") for _ in range(19)) + request_bytes("/", headers=[("Connection", "close")])
    replies = parse_responses(raw_exchange(px.addr, req))
    assert [r.status for r in replies] == [200] * 20
    pods = [r.headers["x-pod"] for r in replies]
    assert pods.count("slow") <= 2 and pods[-10:] == ["fast"] * 10, pods


def test_router_precedence_and_prefix_segments() -> None:
    r = Router([("*", "/", "any"), ("*", "/api", "api"), ("shop.example", "/", "shop"),
                ("*.example", "/", "wild"), ("shop.example", "/api/v2", "v2")], default="dflt")
    assert r.route(b"shop.example:8080", b"/api/v2/x?q") == "v2"
    assert r.route(b"SHOP.example", b"/api/v1") == "shop"
    assert r.route(b"a.example", b"/api") == "wild"
    assert r.route(b"other", b"/api/x") == "api"
    assert r.route(b"other", b"/apiary") == "any"
    assert Router([("a", "/x", "x")]).route(b"b", b"/x") is None
    assert Router([("a", "/x", "x")], default="d").route(b"a", b"/y") == "d"
    assert normalize_host(b"[::1]:80") == b"::1"
    with pytest.raises(ValueError, match="must start with"):
        Router([("a", "x", "x")])
