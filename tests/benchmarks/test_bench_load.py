"""Micro-benchmarks of the load generator's per-request costs (run with --benchmark-enable)."""

from __future__ import annotations

import contextlib
import math
import socket
import time

import numpy as np
import pytest
import uvloop
from pytest_benchmark.fixture import BenchmarkFixture

from lbbench.load.client import HttpClient, Request, _Conn, build_request
from lbbench.load.histogram import LogHistogram
from lbbench.load.recorder import Recorder
from lbbench.load.schedule import build_schedule
from lbbench.load.spec import LoadSpec
from lbbench.model.addresses import HostPort
from lbbench.model.load import ConnectionMode

RESPONSE = (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\nx-pod: web-a\r\n"
            b"x-pod-ip: 127.10.0.2\r\nx-queue-ms: 0.012\r\nx-service-ms: 10.021\r\nContent-Length: 3\r\n"
            b"Date: Wed, 26 Nov 2025 18:00:00 GMT\r\nServer: Python/3.11 aiohttp/3.9\r\n\r\nok\n")


def test_histogram_record_one_value(benchmark: BenchmarkFixture) -> None:
    h = LogHistogram()
    values = np.random.default_rng(0).lognormal(math.log(0.002), 1.0, 1000).tolist()

    def record_1000() -> None:
        for v in values:
            h.record(v)

    benchmark(record_1000)
    assert h.count >= 1000


def test_histogram_record_many(benchmark: BenchmarkFixture) -> None:
    values = np.random.default_rng(0).lognormal(math.log(0.002), 1.0, 100_000)
    h = LogHistogram()
    benchmark(h.record_many, values)
    assert h.count >= 100_000


def test_histogram_merge_and_quantiles(benchmark: BenchmarkFixture) -> None:
    parts = []
    for seed in range(8):
        p = LogHistogram()
        p.record_many(np.random.default_rng(seed).exponential(0.01, 10_000))
        parts.append(p)

    def merge_and_read() -> float:
        return float(LogHistogram.merged(parts).quantiles([0.5, 0.9, 0.99, 0.999])[-1])

    assert benchmark(merge_and_read) > 0


def test_build_poisson_schedule_100k(benchmark: BenchmarkFixture) -> None:
    spec = LoadSpec(HostPort("127.0.0.1", 80), rate_rps=10_000, duration_s=10)
    assert len(benchmark(build_schedule, spec)) == 100_000


class _Sink:
    """Stands in for the HttpClient: only the parse path is measured here."""

    def __init__(self) -> None:
        self.completed = 0

    def response_complete(self, conn: _Conn) -> None:
        self.completed += 1
        conn.req = None


def test_parse_one_response(benchmark: BenchmarkFixture) -> None:
    """One response on a keep-alive connection, whole in one read: the fast path (lbbench.load.head)."""
    sink = _Sink()
    conn = _Conn(sink, 0)  # type: ignore[arg-type]

    def parse() -> None:
        conn.req = Request(0.0, 0.0, -1)
        conn.got_bytes = conn.complete = False  # as _Conn.send leaves them for a new request
        conn.data_received(RESPONSE)

    benchmark(parse)
    assert sink.completed >= 1


NGINX_RESPONSE = (b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Wed, 26 Nov 2025 18:00:00 GMT\r\n"
                  b"Content-Type: text/plain\r\nContent-Length: 3\r\nConnection: keep-alive\r\n\r\nok\n")


class _CountingTransport:
    """Stands in for a connected socket: counts writes (no syscalls, so only Python is measured)."""

    def __init__(self) -> None:
        self.writes = 0

    def write(self, data: bytes) -> None:
        self.writes += 1

    def is_closing(self) -> bool:
        return False

    def abort(self) -> None: ...

    def close(self) -> None: ...


def test_keepalive_request_cycle(benchmark: BenchmarkFixture) -> None:
    """One open-loop request's whole Python path on a free pooled connection: issue, record
    the send, write, parse nginx's answer, settle, record the row and the histograms' values."""

    async def go() -> tuple[int, int]:
        target = HostPort("127.0.0.1", 80)
        rec = Recorder(start_at=0.0, record_rows=True)
        client = HttpClient(target, build_request("/", str(target), close=False), ConnectionMode("keepalive", 16),
                            rec.on_done, pool_size=16)
        for i in range(16):
            conn = _Conn(client, i)
            conn.connection_made(_CountingTransport())  # type: ignore[arg-type]
            client.conns.add(conn)
            client.idle.append(conn)

        def cycle() -> None:
            req = client.issue(time.monotonic())
            rec.on_issue(req)
            assert req.conn is not None
            req.conn.data_received(NGINX_RESPONSE)

        benchmark(cycle)
        client.close()
        return rec.ok, len(rec.latency.counts.nonzero()[0])

    ok, buckets = uvloop.run(go())
    assert ok >= 1 and buckets >= 1


# -- the native load client (_engine.c) ---------------------------------------------------------
REQUEST = build_request("/", "127.0.0.1", close=False)


class _PodEnd:
    """The pod's end of one keep-alive connection, a blocking socket of this thread: per exchange it
    reads one whole request and answers nginx's response."""

    pod: socket.socket

    def exchange(self) -> None:
        got = 0
        while got < len(REQUEST):
            got += len(self.pod.recv(len(REQUEST) - got))
        self.pod.sendall(NGINX_RESPONSE)


class PodFloor(_PodEnd):
    """The floor: the same calls, with the requests already waiting (written STOCK at a time by a
    client socket that never parses the answers, only drains them as it refills)."""

    STOCK = 256

    def __init__(self) -> None:
        listener = socket.create_server(("127.0.0.1", 0))
        self.client = socket.create_connection(listener.getsockname()[:2])
        self.pod, _ = listener.accept()
        listener.close()
        self.client.setblocking(False)
        self.left = 0

    def exchange(self) -> None:
        if not self.left:  # once per STOCK exchanges: a few instructions a call
            with contextlib.suppress(BlockingIOError):
                while self.client.recv(1 << 20):
                    pass
            self.client.setblocking(True)
            self.client.sendall(REQUEST * self.STOCK)
            self.client.setblocking(False)
            self.left = self.STOCK
        self.left -= 1
        super().exchange()

    def close(self) -> None:
        self.client.close()
        self.pod.close()


class NativeClientPair(_PodEnd):
    """One user of the native engine in a closed loop, no think time, over one keep-alive connection
    to this thread's pod end: each answer makes the engine record it and send the next request."""

    def __init__(self) -> None:
        from lbbench.load._engine import Engine

        listener = socket.create_server(("127.0.0.1", 0))
        host, port = listener.getsockname()[:2]
        self.engine = Engine(host, port, REQUEST, 1, 60.0, 3600.0, 0, 1)
        now = time.monotonic()
        self.engine.start_closed(np.array([now]), now + 3600.0, 0.0)
        self.pod, _ = listener.accept()
        listener.close()

    def close(self) -> None:
        self.pod.close()
        self.engine.close()


def test_pod_end_floor(benchmark: BenchmarkFixture) -> None:
    """This thread's side of the exchange alone: what the native client's count is net of."""
    pair = PodFloor()
    try:
        benchmark(pair.exchange)
    finally:
        pair.close()


def test_native_client_exchange(benchmark: BenchmarkFixture) -> None:
    """One keep-alive request through the native engine, over real loopback sockets: the engine's C in
    its own thread (read and scan the answer, record it, issue and send the next request: one recv, one
    send) plus this thread's pod end, which the instruction check subtracts (the floor above)."""
    pytest.importorskip("lbbench.load._engine", reason="the native load client is not built")
    pair = NativeClientPair()
    try:
        benchmark(pair.exchange)
        pair.pod.settimeout(30.0)
        assert len(pair.pod.recv(len(REQUEST))) > 0  # the last answer was read: the next request came
        # and recorded: the engine publishes its counters at the end of its turn, a moment after the send
        deadline, data, issued = time.monotonic() + 10.0, b"", 0
        while issued < 2 and time.monotonic() < deadline:
            time.sleep(0.005)
            chunk, issued, _, _, _, _ = pair.engine.drain()
            data += chunk
        assert issued >= 2 and len(data) >= 1
    finally:
        pair.close()
