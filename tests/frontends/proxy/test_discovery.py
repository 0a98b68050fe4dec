"""`lbbench serve proxy --backend-dns`: a headless Service's A records, from lbbench's real UDP cluster DNS,
become the proxy's Endpoints; a pod replaced under the name is followed with no failed request."""

from __future__ import annotations

import json
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from typing import Any

import pytest
from helpers.dns_thread import DnsThread

from lbbench.cli import build_parser
from lbbench.cluster.standalone import fresh_ip, wait_http_ok, wait_port
from lbbench.commands.serve.proxy import proxy_config
from lbbench.frontends.proxy.discovery import BackendDns, parse_backend_dns
from lbbench.model.addresses import HostPort
from lbbench.system.procs import Child, Supervisor, lbbench_argv

NAME = "web-pods.lbbench-t.svc.cluster.local"
RESOLVE_EVERY_S = 1.0


def _pod(sup: Supervisor, name: str) -> tuple[Child, HostPort]:
    """`lbbench serve pod` on a fresh IP, ready (a generous bound: the test machine is shared)."""
    addr = HostPort(fresh_ip(), 8080)
    child = sup.spawn(name, lbbench_argv("serve", "pod", "--listen", str(addr), "--name", name,
                                         "--service", "const:0ms"))
    wait_http_ok(f"http://{addr}/healthz", 60.0)
    return child, addr


def _proxy(sup: Supervisor, dns: HostPort, *extra: str) -> tuple[Child, HostPort, HostPort]:
    ip = fresh_ip()
    listen, stats = HostPort(ip, 8080), HostPort(ip, 9901)
    argv = lbbench_argv("serve", "proxy", "--listen", str(listen), "--stats", str(stats), "--backend-dns",
                        f"{NAME}:8080", "--resolve-every", f"{RESOLVE_EVERY_S:g}", "--dns", str(dns),
                        "--health-interval", "0", "--no-control", *extra)
    child = sup.spawn("l7-proxy", argv)
    wait_port(listen, 60.0)
    wait_port(stats, 60.0)  # its stats server starts a moment after the listener (CI once asked in between)
    return child, listen, stats


def _stats(addr: HostPort) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://{addr}/stats", timeout=5) as r:
        doc: dict[str, Any] = json.loads(r.read())
    return doc


def _backends(addr: HostPort) -> set[str]:
    return {b["addr"] for svc in _stats(addr)["services"].values() for b in svc["backends"]}


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.headers.get("x-pod", "")
    except urllib.error.HTTPError as e:
        return e.code, ""


class _Traffic(threading.Thread):
    """Requests one after another until stopped: which pods answered, and every non-200."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.pods: Counter[str] = Counter()
        self.failures: list[int] = []
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            status, pod = _get(self.url)
            if status == 200:
                self.pods[pod] += 1
            else:
                self.failures.append(status)
            time.sleep(0.005)


def _wait_backends(stats: HostPort, want: set[str], timeout_s: float) -> float:
    """Seconds until the proxy's backends are `want` (raises after `timeout_s`)."""
    t0 = time.monotonic()
    while _backends(stats) != want:
        if time.monotonic() - t0 > timeout_s:
            raise AssertionError(f"proxy backends {_backends(stats)} != {want} after {timeout_s:g} s")
        time.sleep(0.02)
    return time.monotonic() - t0


def test_proxy_follows_a_pod_replaced_under_the_headless_name(supervisor: Supervisor) -> None:
    with DnsThread() as dns:
        (a, a_addr), (b, b_addr) = _pod(supervisor, "web-a"), _pod(supervisor, "web-b")
        dns.set(NAME, (a_addr.host, b_addr.host))
        _, listen, stats = _proxy(supervisor, dns.addr)
        assert _backends(stats) == {str(a_addr), str(b_addr)}  # resolved before it listened
        traffic = _Traffic(f"http://{listen}/")
        traffic.start()
        try:
            while traffic.pods.keys() < {"web-a", "web-b"}:
                time.sleep(0.02)
            # the Deployment replaces web-a: web-c comes up, then web-a leaves Endpoints (and DNS)
            _, c_addr = _pod(supervisor, "web-c")
            dns.set(NAME, (b_addr.host, c_addr.host))
            followed_s = _wait_backends(stats, {str(b_addr), str(c_addr)}, 10.0)
            print(f"l7-proxy followed the replaced pod in {followed_s:.3f} s (--resolve-every {RESOLVE_EVERY_S:g})")
            assert followed_s <= RESOLVE_EVERY_S + 1.0  # the bound: one period, plus the lookup
            served = traffic.pods["web-c"]
            while traffic.pods["web-c"] < served + 5:
                time.sleep(0.02)
            a.stop_sync()  # web-a had drained: gone from the pool, so stopping it fails nothing
        finally:
            traffic.halt.set()
            traffic.join(10)
        assert traffic.failures == []
        counters = _stats(stats)["totals"]
        assert counters["dns_endpoint_changes"] == 2 and counters["dns_errors"] == 0
        del b


def test_no_pods_is_an_empty_pool_and_pods_coming_back_are_found(supervisor: Supervisor) -> None:
    with DnsThread() as dns:
        _, listen, stats = _proxy(supervisor, dns.addr, "--queue-timeout", "0.2")
        assert _backends(stats) == set()  # NXDOMAIN: a headless Service without ready pods
        assert _get(f"http://{listen}/")[0] == 503
        _, pod = _pod(supervisor, "web-0")
        dns.set(NAME, (pod.host,))
        _wait_backends(stats, {str(pod)}, 10.0)
        assert _get(f"http://{listen}/") == (200, "web-0")


def test_a_dns_outage_keeps_the_backends_it_had(supervisor: Supervisor) -> None:
    with DnsThread() as dns:
        _, pod = _pod(supervisor, "web-0")
        dns.set(NAME, (pod.host,))
        _, listen, stats = _proxy(supervisor, dns.addr)
    # the DNS server is gone now: the proxy keeps its one backend and keeps serving
    while _stats(stats)["totals"].get("dns_errors", 0) < 1:
        time.sleep(0.05)
    assert _backends(stats) == {str(pod)} and _get(f"http://{listen}/") == (200, "web-0")


@pytest.mark.parametrize("argv,message", [
    (["--backend-dns", "web:0"], "NAME:PORT"),
    (["--backend-dns", "web"], "NAME:PORT"),
    (["--backend-dns", "web:80", "--backend", "127.0.0.1:1"], "without --backend"),
    (["--backend-dns", "web:80", "--resolve-every", "0"], "--resolve-every"),
    (["--backend", "127.0.0.1:1", "--resolve-every", "1"], "only applies with --backend-dns"),
    (["--backend", "127.0.0.1:1", "--dns", "127.0.0.1:53"], "only applies with --backend-dns"),
    (["--backend-dns", "web:80", "--listen", "0.0.0.0:8080"], "127.0.0.0/8"),
])
def test_bad_discovery_flags_are_one_line_errors(argv: list[str], message: str) -> None:
    parser, _ = build_parser()
    args = parser.parse_args(["serve", "proxy", "--listen", "127.0.0.1:0", *argv])
    with pytest.raises(ValueError, match=message):
        proxy_config(args)


def test_allow_remote_lifts_the_loopback_rule_for_listen_and_pods() -> None:
    parser, _ = build_parser()
    args = parser.parse_args(["serve", "proxy", "--listen", "0.0.0.0:8080", "--allow-remote", "--backend-dns",
                              "web-pods.ns.svc.cluster.local:8080"])
    config = proxy_config(args)
    assert config.listen == HostPort("0.0.0.0", 8080) and config.discovery is not None
    assert config.discovery.allow_remote and config.discovery.server is None  # the pod's /etc/resolv.conf
    assert parse_backend_dns("Web-Pods.NS.svc.cluster.local.:80") == BackendDns("web-pods.ns.svc.cluster.local", 80)


def test_serve_proxy_rejects_a_remote_listen_in_one_line() -> None:
    proc = subprocess.run(lbbench_argv("serve", "proxy", "--listen", "10.0.0.1:8080", "--backend-dns", "w:80"),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "127.0.0.0/8" in proc.stderr and "Traceback" not in proc.stderr
