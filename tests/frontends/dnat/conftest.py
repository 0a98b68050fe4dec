"""Every userspace-dnat test runs against both relays: the native engine (_crelay.c) and the Python one.

The forwarder processes a test starts inherit the environment, so LBBENCH_PURE_RELAY picks their relay.
Where the extension is not built (no C compiler) the native runs are skipped, saying so; that it is
built by setup.py is checked in tests/test_compiled_build.py.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest

from lbbench.cluster.standalone import fresh_ip
from lbbench.model.addresses import HostPort
from lbbench.system.compiled import PURE_RELAY_ENV, native_relay


@pytest.fixture(autouse=True, params=["native", "python"])
def relay(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Which relay this run of the test exercises (the forwarder's environment says so)."""
    mode: str = request.param
    if mode == "native":
        monkeypatch.delenv(PURE_RELAY_ENV, raising=False)
        if not native_relay():
            pytest.skip("the native relay is not built here (python setup.py build_ext --inplace)")
    else:
        monkeypatch.setenv(PURE_RELAY_ENV, "1")
    assert native_relay() is (mode == "native")
    return mode


@pytest.fixture
def echo_backend() -> Iterator[HostPort]:
    """A blocking-socket echo server (a reference peer outside asyncio); echoes until EOF, then closes."""
    srv = socket.create_server((fresh_ip(), 0))
    srv.settimeout(0.2)
    stop = threading.Event()
    threads: list[threading.Thread] = []

    def serve(conn: socket.socket) -> None:
        with conn:
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
            try:
                while data := conn.recv(65536):
                    conn.sendall(data)
            except OSError:
                pass  # a test that resets its connection

    def accept_loop() -> None:
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except TimeoutError:
                continue
            conn.settimeout(60)
            t = threading.Thread(target=serve, args=(conn,), daemon=True)
            t.start()
            threads.append(t)

    acceptor = threading.Thread(target=accept_loop, daemon=True)
    acceptor.start()
    host, port = srv.getsockname()
    try:
        yield HostPort(host, port)
    finally:
        stop.set()
        acceptor.join(2)
        for t in threads:
            t.join(5)
        srv.close()
