"""The native relay engine (_crelay.c) on its own, over real loopback sockets: its edge cases.

Each test accepts client connections on a listening socket of its own and hands them to an Engine
in this process (what NativeForwarder does once it has picked the endpoint), with real peers on
the other side: blocking sockets in threads. The forwarder-level behaviour (picking, rejecting,
workers, the CLI) is test_dnat.py's, run against both relays.
"""

from __future__ import annotations

import hashlib
import os
import select
import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from lbbench.cluster.standalone import fresh_ip
from lbbench.model.addresses import HostPort
from lbbench.system.compiled import native_relay
from lbbench.system.sharedaccept import Loads, create_loads

if native_relay():
    from lbbench.frontends.dnat._crelay import PENDING_MAX, Engine
else:  # the conftest's relay fixture skips the native runs; the Python runs have nothing to do here
    pytestmark = pytest.mark.skip(reason="the native relay is not built here")


@pytest.fixture(autouse=True, params=["native"])
def relay(request: pytest.FixtureRequest) -> str:
    """Native only (overrides the conftest's both-relays fixture)."""
    return str(request.param)


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _wait(cond: Callable[[], bool], timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


class Rig:
    """A listening socket whose connections go to `backend` through one Engine."""

    def __init__(self, backend: HostPort, rcvbuf: int = 0) -> None:
        self.backend = backend
        self.engine = Engine()
        self.listener = socket.socket()
        if rcvbuf:  # accepted sockets inherit it
            self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.listener.bind((fresh_ip(), 0))
        self.listener.listen(1024)
        self.listener.setblocking(False)
        self.addr = self.listener.getsockname()[:2]

    def hand_over(self) -> bool:
        select.select([self.listener], [], [], 5)
        fd = self.engine.accept(self.listener.fileno())
        assert fd >= 0
        return self.engine.relay(fd, self.backend.host, self.backend.port)

    def connect(self, sndbuf: int = 0) -> socket.socket:
        client = socket.socket()
        if sndbuf:
            client.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
        client.settimeout(30)
        client.connect(self.addr)
        assert self.hand_over()
        return client

    def stats(self) -> dict[str, int]:
        return self.engine.stats()

    def close(self) -> None:
        self.engine.close()
        self.listener.close()


class Pods:
    """A listening 'pod' whose accepted connections a test takes one by one (blocking sockets)."""

    def __init__(self, backlog: int = 128) -> None:
        self.sock = socket.create_server((fresh_ip(), 0), backlog=backlog)
        self.sock.settimeout(10)
        self.addr = HostPort(*self.sock.getsockname()[:2])

    def take(self) -> socket.socket:
        conn, _ = self.sock.accept()
        conn.settimeout(30)
        return conn


@pytest.fixture
def pods() -> Iterator[Pods]:
    p = Pods()
    try:
        yield p
    finally:
        p.sock.close()


@pytest.fixture
def rig(pods: Pods) -> Iterator[Rig]:
    r = Rig(pods.addr)
    try:
        yield r
    finally:
        r.close()


def _recv_all(sock: socket.socket) -> bytes:
    out = bytearray()
    while chunk := sock.recv(65536):
        out += chunk
    return bytes(out)


def _reset(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    sock.close()


# ---------------------------------------------------------------------------------------
# Connecting


def test_refused_connect_resets_the_client_and_is_counted() -> None:
    dead = HostPort(fresh_ip(), 8080)  # nothing listens there
    rig = Rig(dead)
    try:
        with rig.connect() as client, pytest.raises(ConnectionResetError):
            # the pod's refusal can come back before this send (then the send meets the reset) or after it
            client.sendall(b"GET / HTTP/1.1\r\n\r\n")
            client.recv(100)
        assert _wait(lambda: rig.stats()["active"] == 0)
        s = rig.stats()
        assert (s["accepted"], s["connect_failures"], s["bytes_up"]) == (1, 1, 0)
    finally:
        rig.close()


def test_reject_counts_and_resets() -> None:
    rig = Rig(HostPort(fresh_ip(), 8080))
    try:
        client = socket.create_connection(rig.addr, timeout=5)
        select.select([rig.listener], [], [], 5)
        rig.engine.reject(rig.engine.accept(rig.listener.fileno()))
        with pytest.raises(ConnectionResetError):
            client.recv(100)
        client.close()
        s = rig.stats()
        assert (s["accepted"], s["rejected"], s["active"]) == (1, 1, 0)
        assert rig.engine.accept(rig.listener.fileno()) == -1  # nothing queued: no blocking
    finally:
        rig.close()


def _stalled_pod() -> tuple[Pods, socket.socket]:
    """A pod whose accept queue is full: a connect to it stays in SYN_SENT until the queue has room."""
    pod = Pods(backlog=0)  # room for one queued connection
    blocker = socket.create_connection((pod.addr.host, pod.addr.port), timeout=5)
    return pod, blocker


def _unstall(pod: Pods) -> socket.socket:
    """Take the blocker's queued connection: the engine's SYN, retried after ~1 s, gets in; its connection."""
    pod.take().close()
    return pod.take()


def test_bytes_sent_before_the_pod_connection_is_up_are_held_bounded_and_flushed() -> None:
    pod, blocker = _stalled_pod()
    rig = Rig(pod.addr, rcvbuf=65536)
    payload = os.urandom(8 * 1024 * 1024)
    try:
        client = rig.connect(sndbuf=65536)
        client.setblocking(False)
        # Push until nothing more goes: the engine holds PENDING_MAX and then stops reading.
        sent, idle = 0, 0
        while idle < 10 and sent < len(payload):
            try:
                sent += client.send(payload[sent:sent + 65536])
                idle = 0
            except BlockingIOError:
                idle += 1
                time.sleep(0.02)
        # Socket buffers (client's send, engine's receive) plus PENDING_MAX; unbounded, all 8 MB would go.
        assert PENDING_MAX < sent < 2 * 1024 * 1024, sent
        assert rig.stats()["bytes_up"] == 0  # nothing reached a pod yet
        conn = _unstall(pod)
        client.setblocking(True)
        writer = threading.Thread(target=lambda: (client.sendall(payload[sent:]), client.shutdown(socket.SHUT_WR)))
        writer.start()
        got = _recv_all(conn)  # the client's EOF arrives after every held byte
        writer.join(30)
        assert hashlib.sha256(got).digest() == hashlib.sha256(payload).digest()
        conn.close()
        assert client.recv(10) == b""  # the pod's close went through as EOF
        client.close()
        assert _wait(lambda: rig.stats()["active"] == 0)
        assert rig.stats()["bytes_up"] == len(payload)
    finally:
        blocker.close()
        pod.sock.close()
        rig.close()


def test_client_eof_before_the_pod_connection_is_up_is_passed_on_after_the_held_bytes() -> None:
    pod, blocker = _stalled_pod()
    rig = Rig(pod.addr)
    try:
        client = rig.connect()
        client.sendall(b"early bytes")
        client.shutdown(socket.SHUT_WR)
        time.sleep(0.1)
        conn = _unstall(pod)
        assert _recv_all(conn) == b"early bytes"
        conn.sendall(b"late answer")
        conn.close()
        assert _recv_all(client) == b"late answer"
        client.close()
        assert _wait(lambda: rig.stats()["active"] == 0)
    finally:
        blocker.close()
        pod.sock.close()
        rig.close()


# ---------------------------------------------------------------------------------------
# Half-close, resets


def _ends(rig: Rig, pods: Pods, first: str) -> tuple[socket.socket, socket.socket]:
    """The two outer ends of one relayed pair, `first`'s (the client's or the pod's) first."""
    client = rig.connect()
    conn = pods.take()
    return (client, conn) if first == "client" else (conn, client)


@pytest.mark.parametrize("first", ["client", "pod"])
def test_half_close_either_side_first(rig: Rig, pods: Pods, first: str) -> None:
    a, b = _ends(rig, pods, first)
    a.sendall(b"before the FIN")
    a.shutdown(socket.SHUT_WR)
    assert _recv_all(b) == b"before the FIN"  # the FIN came through, after the bytes
    b.sendall(b"the other direction still flows")
    time.sleep(0.05)
    assert rig.stats()["active"] == 1  # half-closed, not closed
    b.shutdown(socket.SHUT_WR)
    assert _recv_all(a) == b"the other direction still flows"
    assert _wait(lambda: rig.stats()["active"] == 0)  # both directions done: both closed
    s = rig.stats()
    up, down = len(b"before the FIN"), len(b"the other direction still flows")
    assert (s["bytes_up"], s["bytes_down"]) == ((up, down) if first == "client" else (down, up))
    a.close()
    b.close()


@pytest.mark.parametrize("first", ["client", "pod"])
def test_a_reset_is_passed_to_the_other_side(rig: Rig, pods: Pods, first: str) -> None:
    a, b = _ends(rig, pods, first)
    a.sendall(b"x")
    assert b.recv(1) == b"x"  # the pair is up
    _reset(a)
    with pytest.raises(ConnectionResetError):
        b.recv(100)
    b.close()
    assert _wait(lambda: rig.stats()["active"] == 0)


# ---------------------------------------------------------------------------------------
# Flow control, many connections, counters, closing


@pytest.mark.slow
def test_big_transfer_both_ways_through_flow_control_is_exact(rig: Rig, pods: Pods) -> None:
    up, down = os.urandom(6 * 1024 * 1024), os.urandom(5 * 1024 * 1024)
    client = rig.connect()
    conn = pods.take()
    for s in (client, conn):
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32768)  # slow, small readers: the engine must wait
    got: dict[str, bytes] = {}

    def slow_read(name: str, sock: socket.socket) -> None:
        out = bytearray()
        while chunk := sock.recv(16384):
            out += chunk
            time.sleep(0.0005)
        got[name] = bytes(out)

    def send(sock: socket.socket, data: bytes) -> None:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)

    threads = [threading.Thread(target=slow_read, args=("pod", conn)),
               threading.Thread(target=slow_read, args=("client", client)),
               threading.Thread(target=send, args=(client, up)), threading.Thread(target=send, args=(conn, down))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert hashlib.sha256(got["pod"]).digest() == hashlib.sha256(up).digest()
    assert hashlib.sha256(got["client"]).digest() == hashlib.sha256(down).digest()
    assert _wait(lambda: rig.stats()["active"] == 0)
    s = rig.stats()
    assert (s["bytes_up"], s["bytes_down"]) == (len(up), len(down))
    client.close()
    conn.close()


def test_many_connections_at_once_echo_exactly(echo_backend: HostPort) -> None:
    rig = Rig(echo_backend)
    n = 300
    try:
        clients = [rig.connect() for _ in range(n)]
        assert rig.stats()["active"] == n
        for i, c in enumerate(clients):
            c.sendall(f"message {i} ".encode() * 50)
        for i, c in enumerate(clients):
            want = f"message {i} ".encode() * 50
            got = b""
            while len(got) < len(want):
                got += c.recv(65536)
            assert got == want
        assert all(pair == (True, True) for pair in rig.engine.nodelay())  # both sockets, as uvloop's
        assert len(rig.engine.nodelay()) == n
        for c in clients:
            c.close()
        assert _wait(lambda: rig.stats()["active"] == 0)
        s = rig.stats()
        sent = sum(len(f"message {i} ".encode() * 50) for i in range(n))
        assert (s["accepted"], s["bytes_up"], s["bytes_down"], s["connect_failures"]) == (n, sent, sent, 0)
    finally:
        rig.close()


def test_close_with_connections_open_leaks_no_fd(echo_backend: HostPort) -> None:
    before = _fds()
    rig = Rig(echo_backend)
    clients = [rig.connect() for _ in range(20)]
    for c in clients:
        c.sendall(b"ping")
        assert c.recv(4) == b"ping"
    assert _fds() >= before + 2 + 20 * 3  # epoll, eventfd; per pair: the client's end and the engine's two
    rig.close()
    rig.close()  # idempotent
    assert rig.engine.closed
    for c in clients:
        assert c.recv(10) == b""  # the engine closed its ends
        c.close()
    assert _wait(lambda: _fds() == before), _fds() - before  # the echo threads close their ends on our EOF
    with pytest.raises(ValueError, match="closed"):
        rig.engine.accept(0)


def test_the_shared_loads_slot_follows_the_open_pairs(echo_backend: HostPort) -> None:
    fd = create_loads(2)
    loads = Loads(fd, 2, 1)
    os.close(fd)
    rig = Rig(echo_backend)
    try:
        rig.engine.share_loads(loads.counts, loads.index)
        clients = [rig.connect() for _ in range(5)]
        assert loads.counts.tolist() == [0, 5]  # counted at hand-over, before the engine's thread runs
        clients.pop().close()
        clients.pop().close()
        assert _wait(lambda: loads.mine == 3)  # a close shows at once to the other workers' acceptors
        with pytest.raises(ValueError):
            rig.engine.share_loads(loads.counts, 0)  # one array per engine
        for c in clients:
            c.close()
        assert _wait(lambda: loads.mine == 0)
    finally:
        rig.close()  # releases its hold on the array
        loads.close()


def test_a_bad_address_is_refused_and_the_fd_closed() -> None:
    rig = Rig(HostPort("not-an-ip", 80))
    try:
        client = socket.create_connection(rig.addr, timeout=5)
        with pytest.raises(ValueError, match="not an IP address"):
            rig.hand_over()
        with pytest.raises(ConnectionResetError):
            client.recv(10)
        client.close()
    finally:
        rig.close()
