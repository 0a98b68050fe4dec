"""Fixtures of the load tests: a listener that never accepts, and which client a generator test runs."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from lbbench.cluster.standalone import fresh_ip
from lbbench.model.addresses import HostPort
from lbbench.system.compiled import PURE_CLIENT_ENV, native_client


@pytest.fixture
def full_listener() -> Iterator[HostPort]:
    """A listening socket whose accept queue is full: further SYNs are dropped, connect hangs."""
    srv = socket.socket()
    srv.bind((fresh_ip(), 0))
    srv.listen(0)
    addr = HostPort(*srv.getsockname()[:2])
    fillers = []
    try:
        for _ in range(8):
            c = socket.socket()
            c.settimeout(0.2)
            fillers.append(c)
            try:
                c.connect((addr.host, addr.port))
            except OSError:
                break
        else:
            pytest.skip("could not fill the accept queue")
        yield addr
    finally:
        for c in fillers:
            c.close()
        srv.close()


@pytest.fixture(params=["native", "python"])
def load_client(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Which client a run uses, keep-alive or close mode: the C engine (_engine.c) or HttpClient.

    The worker processes inherit the environment, so LBBENCH_PURE_CLIENT picks theirs; where the
    extension is not built the native runs are skipped, saying so (tests/system/test_compiled.py
    fails where a compiler is but it is not built)."""
    mode: str = request.param
    if mode == "native":
        monkeypatch.delenv(PURE_CLIENT_ENV, raising=False)
        if not native_client():
            pytest.skip("the native load client is not built here (python setup.py build_ext --inplace)")
    else:
        monkeypatch.setenv(PURE_CLIENT_ENV, "1")
    assert native_client() is (mode == "native")
    return mode
