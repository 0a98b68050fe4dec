"""The raw HTTP/1.1 client against real pods and scripted loopback servers (no mocks)."""

from __future__ import annotations

import asyncio
import socket
import time

import pytest
from helpers.client_peers import fetch, run, scripted, two_then_close_and_drop_fifth

from lbbench.cluster.standalone import fresh_ip, start_pod
from lbbench.load.client import HttpClient, Request, build_request
from lbbench.model.addresses import HostPort
from lbbench.model.load import ConnectionMode
from lbbench.system.procs import Supervisor


@pytest.fixture
def pod(supervisor: Supervisor) -> HostPort:
    return start_pod(supervisor, "web-a", service="const:1ms", slots=4)[1]


# -- tests ----------------------------------------------------------------------------------------
def test_close_mode_opens_a_new_connection_per_request(pod: HostPort) -> None:
    reqs = run(fetch(pod, n=5))
    assert [r.error for r in reqs] == [""] * 5
    assert {r.status for r in reqs} == {200}
    assert len({r.conn_id for r in reqs}) == 5 and all(r.new_conn for r in reqs)
    assert {r.pod for r in reqs} == {"web-a"} and {r.pod_ip for r in reqs} == {pod.host}
    assert all(r.service_ms > 0.5 and r.queue_ms >= 0 for r in reqs)  # const:1ms, as the pod measured it
    assert all(r.intended <= r.issued <= r.sent < r.done for r in reqs)


def test_keepalive_pool_reuses_exactly_k_connections(pod: HostPort) -> None:
    reqs = run(fetch(pod, mode="keepalive:2", n=20, sequential=False))
    assert len(reqs) == 20 and all(r.error == "" for r in reqs)
    assert len({r.conn_id for r in reqs}) == 2
    assert sum(r.new_conn for r in reqs) == 2
    # one parser per connection, reused: every response's own status and headers are read
    assert {r.status for r in reqs} == {200} and {r.pod for r in reqs} == {"web-a"}
    assert all(r.service_ms > 0.5 for r in reqs)


def test_open_loop_waits_for_a_free_connection_and_counts_latency_from_intended(supervisor: Supervisor) -> None:
    _, addr = start_pod(supervisor, "slow", service="const:50ms", slots=4)
    reqs = run(fetch(addr, mode="keepalive:1", n=4, sequential=False))
    latencies = sorted(r.done - r.intended for r in reqs)
    assert len({r.conn_id for r in reqs}) == 1
    for k, lat in enumerate(latencies, start=1):  # one connection: they go one after another
        assert lat >= 0.045 * k
    waited = sorted(r.sent - r.issued for r in reqs)
    assert waited[0] < 0.02 and waited[-1] >= 0.14


def test_refused() -> None:
    with socket.socket() as s:  # a free port on a fresh IP with nothing listening
        s.bind((fresh_ip(), 0))
        host, port = s.getsockname()
    [r] = run(fetch(HostPort(host, port)))
    assert r.error == "refused" and r.status == 0 and r.conn_id >= 0


def test_connect_timeout(full_listener: HostPort) -> None:
    t0 = time.monotonic()
    [r] = run(fetch(full_listener, connect_timeout_s=0.2))
    assert r.error == "connect_timeout"
    assert 0.19 <= r.done - r.intended < 1.0 and time.monotonic() - t0 < 2


def test_total_timeout_counts_from_the_intended_time(pod: HostPort) -> None:
    [r] = run(fetch(pod, "/?hang=100", timeout_s=0.3))
    assert r.error == "timeout"
    assert 0.29 <= r.done - r.intended < 0.8


def test_each_request_times_out_from_its_own_intended_time(pod: HostPort) -> None:
    """Staggered hung requests, some intended in the past: one timeout queue serves them all."""
    async def go() -> list[Request]:
        done: list[Request] = []
        m = ConnectionMode.parse("close")
        client = HttpClient(pod, build_request("/?hang=100", str(pod), close=True), m, done.append, timeout_s=0.3)
        now = time.monotonic()
        for offset in (-0.2, -0.1, 0.0, 0.05, 0.1):
            client.issue(now + offset)
            await asyncio.sleep(0.05)
        await asyncio.wait_for(client.wait_idle(), 2.0)
        client.close()
        await asyncio.sleep(0.02)
        return done

    reqs = run(go())
    assert [r.error for r in reqs] == ["timeout"] * 5
    assert [r.intended for r in reqs] == sorted(r.intended for r in reqs)
    assert all(0.299 <= r.done - r.intended < 0.45 for r in reqs), [r.done - r.intended for r in reqs]


def test_peer_closing_without_reply_is_a_reset(pod: HostPort) -> None:
    [r] = run(fetch(pod, "/?close=100"))
    assert r.error == "reset" and r.status == 0


@pytest.mark.parametrize(("status", "error"), [(503, "http_5xx"), (500, "http_5xx"), (404, "http_4xx"),
                                               (429, "http_4xx"), (302, "")])
def test_http_status_classes(pod: HostPort, status: int, error: str) -> None:
    [r] = run(fetch(pod, f"/?status={status}:100"))
    assert (r.status, r.error) == (status, error)
    assert r.pod == "web-a"


def test_truncated_response() -> None:
    def partial(conn: int, n: int, tr: asyncio.Transport) -> None:
        tr.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly a part")
        tr.close()

    async def go() -> list[Request]:
        async with scripted(partial) as addr:
            return await fetch(addr)

    [r] = run(go())
    assert r.error == "truncated" and r.status == 200


@pytest.mark.parametrize(("answer", "status"), [
    (b"SSH-2.0-OpenSSH\r\n\r\n", 0),
    # httptools raises HttpParserUpgrade, no HttpParserError, for a protocol switch nobody asked for
    (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n", 101),
])
def test_garbage_is_other_at_once(answer: bytes, status: int) -> None:
    def garbage(conn: int, n: int, tr: asyncio.Transport) -> None:
        tr.write(answer)

    async def go() -> list[Request]:
        async with scripted(garbage) as addr:
            return await fetch(addr, timeout_s=5)

    t0 = time.monotonic()
    [r] = run(go())
    assert (r.error, r.status) == ("other", status) and time.monotonic() - t0 < 2  # not the timeout


def test_body_delimited_by_connection_end_is_complete() -> None:
    def http10(conn: int, n: int, tr: asyncio.Transport) -> None:
        tr.write(b"HTTP/1.1 200 OK\r\nx-pod: old\r\n\r\nthe body runs to the end")
        tr.close()

    async def go() -> list[Request]:
        async with scripted(http10) as addr:
            return await fetch(addr, timeout_s=2)

    [r] = run(go())
    assert (r.error, r.status, r.pod) == ("", 200, "old")


def test_broken_keepalive_connections_are_replaced() -> None:
    """Server closes every connection after two answers, and drops the 5th request without one."""
    async def go() -> list[Request]:
        async with scripted(two_then_close_and_drop_fifth()) as addr:
            return await fetch(addr, mode="keepalive:1", n=7, pause_s=0.05)

    reqs = run(go())
    assert [r.error for r in reqs] == ["", "", "", "", "reset", "", ""]
    ids = [r.conn_id for r in reqs]
    assert ids[0] == ids[1] != ids[2] == ids[3] != ids[4] != ids[5] == ids[6]
    assert [r.new_conn for r in reqs] == [True, False, True, False, True, True, False]


def test_abort_all_drops_outstanding_requests(pod: HostPort) -> None:
    async def go() -> tuple[list[Request], int, int]:
        done: list[Request] = []
        m = ConnectionMode.parse("keepalive:1")
        client = HttpClient(pod, build_request("/?hang=100", str(pod), close=False), m, done.append, pool_size=1)
        for _ in range(3):
            client.issue(time.monotonic())
        await asyncio.sleep(0.2)
        dropped = client.abort_all()
        await asyncio.wait_for(client.wait_idle(), 1.0)
        await asyncio.sleep(0.02)
        return done, dropped, client.outstanding

    done, dropped, outstanding = run(go())
    assert (len(done), dropped, outstanding) == (0, 3, 0)
