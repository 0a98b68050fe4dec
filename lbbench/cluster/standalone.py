"""Helpers shared by the tests and the benchmarks: real pods on fresh loopback IPs."""

from __future__ import annotations

import random
import socket
import time
import urllib.request

from lbbench.model.addresses import HostPort
from lbbench.system.procs import Child, Supervisor, lbbench_argv

_rng = random.SystemRandom()


def fresh_ip() -> str:
    """A random loopback IP in 127.128.0.0/9 that nothing is bound to on port 8080.

    Random rather than sequential so that test runs of several developers on one machine
    do not collide; checked by binding.
    """
    while True:
        ip = f"127.{_rng.randint(128, 254)}.{_rng.randint(0, 255)}.{_rng.randint(2, 254)}"
        with socket.socket() as s:
            try:
                s.bind((ip, 8080))
            except OSError:
                continue
        return ip


def wait_http_ok(url: str, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1.0) as r:
                if r.status == 200:
                    return
        except Exception as e:
            last = e
        time.sleep(0.02)
    raise TimeoutError(f"{url} not ready after {timeout_s}s: {last}")


def wait_port(addr: HostPort, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((addr.host, addr.port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.02)
    raise TimeoutError(f"{addr} not accepting after {timeout_s}s")


def start_pod(
    sup: Supervisor,
    name: str = "pod",
    *,
    ip: str | None = None,
    port: int = 8080,
    service: str = "const:0ms",
    slots: int = 1,
    extra: tuple[str, ...] = (),
    ready_timeout_s: float = 10.0,
) -> tuple[Child, HostPort]:
    """Start `lbbench serve pod` under `sup` and wait (up to `ready_timeout_s`) until /healthz answers."""
    addr = HostPort(ip or fresh_ip(), port)
    argv = lbbench_argv(
        "serve", "pod", "--listen", str(addr), "--name", name, "--service", service, "--slots", str(slots), *extra
    )
    child = sup.spawn(f"pod/{name}", argv)
    wait_http_ok(f"http://{addr}/healthz", ready_timeout_s)
    return child, addr
