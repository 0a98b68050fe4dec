"""Failure handling: active checks, passive ejection, connect retries, timeouts, clients leaving, shutdown."""

from __future__ import annotations

import concurrent.futures
import signal
import socket
import struct
import threading
import time

import pytest
from helpers.proxy import get_stats, parse_responses, raw_exchange, request_bytes, start_proxy

from lbbench.cluster.standalone import fresh_ip, start_pod
from lbbench.model.addresses import HostPort
from lbbench.system.control import send
from lbbench.system.procs import Supervisor


def _get(addr: HostPort, path: str = "/") -> tuple[int, str, bytes]:
    replies = parse_responses(raw_exchange(addr, request_bytes(path, headers=[("Connection", "close")]),
                                           timeout_s=10))
    assert len(replies) == 1
    return replies[0].status, replies[0].headers.get("x-pod", ""), replies[0].body


def _until(predicate: object, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


def _backend(px_stats: HostPort, pod: str) -> dict[str, object]:
    backends = get_stats(px_stats)["services"]["default/default"]["backends"]
    (found,) = [b for b in backends if b["addr"] == pod]
    return found  # type: ignore[no-any-return]


def test_active_checks_mark_an_unready_pod_down_and_bring_it_back(supervisor: Supervisor) -> None:
    sick, sick_addr = start_pod(supervisor, "sick")
    _, well_addr = start_pod(supervisor, "well")
    px = start_proxy(supervisor, [sick_addr, well_addr], "--health-interval", "0.1", "--health-fall", "2",
                     "--health-rise", "2", "--maxconn", "0")
    assert send(sick.stdin, {"faults": {"ready": False}})
    _until(lambda: _backend(px.stats, str(sick_addr))["state"] == "down")
    assert {_get(px.addr)[1] for _ in range(10)} == {"well"}
    assert send(sick.stdin, {"faults": {"ready": True}})
    _until(lambda: _backend(px.stats, str(sick_addr))["state"] == "up")
    assert {_get(px.addr)[1] for _ in range(10)} == {"sick", "well"}
    assert get_stats(px.stats)["totals"]["marked_down"] == 1


def test_passive_ejection_after_consecutive_5xx(supervisor: Supervisor) -> None:
    _, bad = start_pod(supervisor, "bad", extra=("--error-rate", "1.0"))
    _, good = start_pod(supervisor, "good")
    px = start_proxy(supervisor, [bad, good], "--health-interval", "0", "--eject-after", "3",
                     "--balance", "round-robin")
    results = [_get(px.addr) for _ in range(30)]
    from_bad = [r for r in results if r[1] == "bad"]
    assert len(from_bad) == 3 and all(status == 503 for status, _, _ in from_bad)  # then it was ejected
    assert _backend(px.stats, str(bad))["state"] == "ejected"
    assert get_stats(px.stats)["totals"]["ejections"] == 1


def test_connect_failures_are_retried_on_another_backend(supervisor: Supervisor) -> None:
    _, live = start_pod(supervisor, "live")
    dead = HostPort(fresh_ip(), 8080)  # nothing listens there: connection refused
    px = start_proxy(supervisor, [dead, live], "--health-interval", "0", "--balance", "round-robin")
    assert [_get(px.addr)[0] for _ in range(10)] == [200] * 10
    totals = get_stats(px.stats)["totals"]
    assert totals["connect_failed"] >= 1 and totals["retries"] == totals["connect_failed"]
    assert _backend(px.stats, str(dead))["state"] == "ejected"
    px0 = start_proxy(supervisor, [dead], "--health-interval", "0", "--retries", "0", "--queue-timeout", "0.5")
    status, _, body = _get(px0.addr)
    assert status == 503 and b"accepted a connection" in body


class _Mute:
    """A backend that passes its health checks and holds every other request unanswered.

    `vanish()` closes its listener, so checks are refused (as for a pod whose node died), while the held
    connections stay open and mute, as they look from the proxy when packets to the node go nowhere.
    `sicken()` makes the checks answer 503 instead (reached, unready): the held requests may still end.
    """

    def __init__(self) -> None:
        self.listener = socket.create_server((fresh_ip(), 0))
        self.listener.settimeout(0.05)
        host, port = self.listener.getsockname()[:2]
        self.addr = HostPort(host, port)
        self.held: list[socket.socket] = []
        self.ill = False
        self.open = True
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while self.open:
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            head = conn.recv(65536)
            if head.startswith(b"GET /healthz"):
                conn.sendall(b"HTTP/1.1 503 Unready\r\nContent-Length: 0\r\n\r\n" if self.ill else
                             b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
                conn.close()
            else:
                self.held.append(conn)
        self.listener.close()

    def vanish(self) -> None:
        self.open = False
        self.thread.join(5)

    def sicken(self) -> None:
        self.ill = True

    def close(self) -> None:
        self.vanish()
        for c in self.held:
            c.close()


@pytest.mark.parametrize(("retries", "fault"), [(3, "vanish"), (0, "vanish"), (3, "sicken")])
def test_requests_held_by_a_backend_its_checks_cannot_reach_are_given_up(supervisor: Supervisor, retries: int,
                                                                          fault: str) -> None:
    """HAProxy's on-marked-down shutdown-sessions, for an unreachable backend only: its held request is
    retried elsewhere (or answered 502 without retries) once the checks mark it down; a backend that is
    reached but unready keeps its requests (they end at the server timeout here)."""
    mute = _Mute()
    _, live = start_pod(supervisor, "live")
    px = start_proxy(supervisor, [mute.addr, live], "--health-interval", "0.1", "--health-timeout", "0.1",
                     "--health-fall", "2", "--balance", "round-robin", "--maxconn", "0", "--retries", str(retries),
                     "--server-timeout", "2")
    try:
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            t0 = time.monotonic()
            first = pool.submit(_get, px.addr)  # round-robin: the first request goes to the mute backend
            _until(lambda: len(mute.held) == 1, 5.0)
            getattr(mute, fault)()
            status, pod, body = first.result()
            took = time.monotonic() - t0
        totals = get_stats(px.stats)["totals"]
        assert totals["marked_down"] == 1
        if fault == "sicken":
            assert status == 504 and took >= 1.9 and totals.get("unreachable", 0) == 0
        elif retries:
            assert (status, pod) == (200, "live") and took < 1.5 and totals["unreachable"] == 1
        else:
            assert status == 502 and b"unreachable" in body and took < 1.5
    finally:
        mute.close()


def test_backend_silence_beyond_server_timeout_is_504(supervisor: Supervisor) -> None:
    _, pod = start_pod(supervisor, "mute")
    px = start_proxy(supervisor, [pod], "--server-timeout", "0.5", "--health-interval", "0")
    t0 = time.monotonic()
    status, _, body = _get(px.addr, "/?hang=100")
    assert status == 504 and b"within 0.5 s" in body
    assert 0.45 <= time.monotonic() - t0 < 2.0
    assert _get(px.addr)[0] == 200
    assert get_stats(px.stats)["totals"]["timeout"] == 1


def test_clients_leaving_free_their_slot_and_their_place_in_the_queue(supervisor: Supervisor) -> None:
    _, pod = start_pod(supervisor, "p")
    px = start_proxy(supervisor, [pod], "--maxconn", "1")
    socks = []
    for path in ("/?delay=2s:100", "/"):  # the first is served, the second waits in the queue
        s = socket.create_connection((px.addr.host, px.addr.port))
        s.sendall(request_bytes(path))
        socks.append(s)
        time.sleep(0.2)
    svc = get_stats(px.stats)["services"]["default/default"]
    assert (svc["in_flight"], svc["queue_len"]) == (1, 1)
    socks[1].close()  # FIN while queued: it gave up
    _until(lambda: get_stats(px.stats)["totals"]["queue_len"] == 0, 2.0)
    socks[0].setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    socks[0].close()  # RST while served: the backend connection is dropped and the slot freed
    _until(lambda: get_stats(px.stats)["totals"]["in_flight_total"] == 0, 1.0)
    totals = get_stats(px.stats)["totals"]
    assert totals["queue_len"] == 0 and totals["client_aborts"] == 2 and totals["client_gone_queued"] == 1
    (reply,) = parse_responses(raw_exchange(px.addr, request_bytes("/", headers=[("Connection", "close")])))
    assert reply.status == 200
    # The proxy gave the slot back at once; the pod, which does not notice the abort, still finishes
    # the abandoned 2 s request first (as behind HAProxy): the wait moved into the pod.
    assert float(reply.headers["x-proxy-queue-ms"]) < 100.0
    assert float(reply.headers["x-queue-ms"]) > 500.0


def test_sigterm_lets_requests_in_progress_finish(supervisor: Supervisor) -> None:
    _, pod = start_pod(supervisor, "p")
    px = start_proxy(supervisor, [pod])
    with concurrent.futures.ThreadPoolExecutor(1) as ex:
        fut = ex.submit(_get, px.addr, "/?delay=500ms:100")
        time.sleep(0.2)
        px.child.signal(signal.SIGTERM)
        assert fut.result()[0] == 200
    assert px.child.popen.wait(5) == 0
    with pytest.raises(ConnectionRefusedError):
        _get(px.addr)
