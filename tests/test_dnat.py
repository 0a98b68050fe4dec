"""userspace-dnat: random DNAT per new connection, no queue, no retry; real pods and sockets."""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import subprocess
import threading
import time
from collections.abc import Iterator

import psutil
import pytest
from l4_scenarios import http_conn, run_scenario
from scipy.stats import chisquare

from lbbench.frontends.base import Endpoint, FrontendPlan, ServiceSpec
from lbbench.frontends.dnat import ForwarderPlan, UserspaceDnat, entrypoint_of, forwarder_plan
from lbbench.netaddr import HostPort
from lbbench.procs import Child, Supervisor, lbbench_argv
from lbbench.testing import fresh_ip, start_pod, wait_port

FRONTEND = "userspace-dnat"


def lb_service() -> ServiceSpec:
    return ServiceSpec("web", "default", "LoadBalancer", "127.77.0.1", 80, 8080, node_port=30080,
                       node_ips=("127.77.1.1", "127.77.1.2"), lb_ip="127.77.2.1")


# ---------------------------------------------------------------------------------------
# Plans and Service types (no sockets)


def test_plan_covers_every_service_type_and_roundtrips() -> None:
    plan = forwarder_plan([lb_service()], "rr", 7)
    addrs = {str(lst.addr): lst.table for lst in plan.listeners}
    assert addrs == {"127.77.0.1:80": "default/web", "127.77.1.1:30080": "default/web",
                     "127.77.1.2:30080": "default/web", "127.77.2.1:80": "lb:default/web"}
    # the cloud LB spreads over the node IP:NodePort pairs (a second hop)
    assert dict(plan.tables)["lb:default/web"] == (HostPort("127.77.1.1", 30080), HostPort("127.77.1.2", 30080))
    assert ForwarderPlan.from_json(plan.to_json()) == plan


def test_entrypoints_per_service_type() -> None:
    spec = lb_service()
    assert str(entrypoint_of(spec, "ClusterIP").addr) == "127.77.0.1:80"
    assert str(entrypoint_of(spec, "NodePort").addr) == "127.77.1.1:30080"
    assert str(entrypoint_of(spec, "LoadBalancer").addr) == "127.77.2.1:80"
    cluster_only = ServiceSpec("db", "default", "ClusterIP", "127.77.0.2", 5432, 5432)
    with pytest.raises(ValueError, match="no NodePort"):
        entrypoint_of(cluster_only, "NodePort")
    with pytest.raises(ValueError, match="no LoadBalancer"):
        entrypoint_of(cluster_only, "LoadBalancer")


@pytest.mark.parametrize("bad", [
    ServiceSpec("web", "default", "ClusterIP", "10.0.0.1", 80, 8080),
    ServiceSpec("web", "default", "NodePort", "127.77.0.1", 80, 8080),  # no node_port
    ServiceSpec("web", "default", "LoadBalancer", "127.77.0.1", 80, 8080, node_port=30080,
                node_ips=("127.77.1.1",)),  # no lb_ip
])
def test_invalid_services_are_refused(bad: ServiceSpec) -> None:
    with pytest.raises(ValueError):
        forwarder_plan([bad], "random", 0)


def test_cli_refuses_non_loopback_with_one_line() -> None:
    r = subprocess.run(lbbench_argv("serve", "dnat", "--listen", "10.1.2.3:80", "--backend", "127.0.0.1:1"),
                       capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
    assert r.returncode == 2
    assert "not in 127.0.0.0/8" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


# ---------------------------------------------------------------------------------------
# Balancing


@pytest.mark.slow
def test_uniform_random_per_new_connection_and_keepalive_sticks() -> None:
    r = run_scenario("uniformity", FRONTEND)
    counts = r["new"]["served"]
    assert r["new"]["errors"] == {}
    assert sorted(counts) == ["pod-0", "pod-1", "pod-2", "pod-3"]
    assert sum(counts.values()) == 2000
    assert chisquare(list(counts.values())).pvalue > 0.001
    # keepalive:2 -> both requests of a connection on one pod; and connections do spread
    assert r["keepalive_errors"] == 0
    assert len(r["keepalive"]) == 200
    assert all(len(set(pods)) == 1 and len(pods) == 2 for pods in r["keepalive"])
    assert len({pods[0] for pods in r["keepalive"]}) == 4
    assert r["counters"]["connections_total"] == 2200
    assert r["drained"] is True  # every relayed connection closed once its client was done


def test_round_robin_mode_cycles_in_order(supervisor: Supervisor) -> None:
    pods = [start_pod(supervisor, f"rr-{i}")[1] for i in range(3)]
    vip = HostPort(fresh_ip(), 8080)
    argv = lbbench_argv("serve", "dnat", "--listen", str(vip), "--mode", "rr",
                        *[a for p in pods for a in ("--backend", str(p))])
    supervisor.spawn("dnat-rr", argv)
    wait_port(vip)  # this probe connection takes the first turn (rr-0)

    async def sequential() -> list[str]:
        return [(await http_conn(vip)).pods[0] for _ in range(6)]

    assert asyncio.run(sequential()) == ["rr-1", "rr-2", "rr-0", "rr-1", "rr-2", "rr-0"]


def test_established_connection_stays_on_removed_endpoint() -> None:
    r = run_scenario("conntrack", FRONTEND)
    sticky = r["sticky"]
    assert len(sticky) == 3 and len(set(sticky)) == 1
    assert sticky[0] not in r["after"]["served"]  # new connections no longer pick it
    assert r["after"]["errors"] == {}


@pytest.mark.slow
def test_dead_endpoint_fails_until_sync_then_never() -> None:
    r = run_scenario("dead_endpoint", FRONTEND)
    flight, before, after = r["in_flight"], r["before_sync"], r["after_sync"]
    # in-flight requests on the killed pod fail; the others complete
    assert "pod-0" not in flight["served"]
    assert sum(flight["errors"].values()) >= 1
    assert sum(flight["served"].values()) + sum(flight["errors"].values()) == 40
    # before the sync: the dead pod is still picked, 1 in 4, and those connections are reset
    failed = sum(before["errors"].values())
    assert set(before["errors"]) <= {"reset", "refused", "eof"}
    assert 0.12 < failed / 400 < 0.40
    assert "pod-0" not in before["served"]
    # after the sync: none fail
    assert after["errors"] == {}
    assert sorted(after["served"]) == ["pod-1", "pod-2", "pod-3"]
    assert r["counters"]["connect_failures_total"] == failed


def test_service_types_all_reach_the_pods() -> None:
    r = run_scenario("service_types", FRONTEND)
    results = [r["ClusterIP"], *r["NodePort"].values(), r["LoadBalancer"]]
    assert len(r["NodePort"]) == 2
    for res in results:
        assert res["errors"] == {}
        assert len(res["served"]) >= 2  # spread, not pinned
    # LB connections make a second hop through a NodePort listener of the same forwarder
    assert r["counters"]["connections_total"] == 40 + 80 + 80 * 2


# ---------------------------------------------------------------------------------------
# Rejects and resets


def _expect_reset(addr: HostPort) -> str:
    """The forwarder accepts, then resets: the RST may even beat connect() returning."""
    try:
        with socket.create_connection((addr.host, addr.port), timeout=5) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            data = s.recv(100)
    except (ConnectionResetError, BrokenPipeError):
        return "reset"
    return "eof" if data == b"" else "data"


def test_empty_table_resets_at_once_and_connect_failure_resets() -> None:
    async def body() -> tuple[list[str], dict[str, float], list[int]]:
        sup = Supervisor()
        spec = ServiceSpec("web", "default", "ClusterIP", fresh_ip(), 80, 8080)
        fe = UserspaceDnat(FrontendPlan((spec,)), sup)
        try:
            await fe.start()
            addr = fe.entrypoint(spec.key).addr
            outcomes = [await asyncio.to_thread(_expect_reset, addr)]  # no endpoints: REJECT
            dead = HostPort(fresh_ip(), 8080)  # nothing listens there
            await fe.update_endpoints(spec.key, (Endpoint("gone", dead.host, dead.port),))
            outcomes.append(await asyncio.to_thread(_expect_reset, addr))
            return outcomes, await fe.counters(), fe.pids()
        finally:
            await fe.stop()
            await sup.aclose()

    outcomes, counters, pids = asyncio.run(body())
    assert outcomes == ["reset", "reset"]
    assert counters["rejected_no_endpoints_total"] == 1
    assert counters["connect_failures_total"] == 1
    assert counters["connections_active"] == 0
    assert len(pids) == 1


def test_forwarder_exits_when_its_control_pipe_closes() -> None:
    async def body() -> Child:
        sup = Supervisor()
        fe = UserspaceDnat(FrontendPlan((ServiceSpec("web", "default", "ClusterIP", fresh_ip(), 80, 8080),)), sup)
        await fe.start()
        assert fe.process is not None and fe.process.child is not None
        child = fe.process.child
        assert child.stdin is not None
        child.stdin.close()  # as if lbbench died
        await asyncio.wait_for(child.wait(), 5)
        await fe.stop()
        await sup.aclose()
        return child

    child = asyncio.run(body())
    assert child.popen.returncode == 0


# ---------------------------------------------------------------------------------------
# Byte-exact relay, half-close and flow control


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
            while data := conn.recv(65536):
                conn.sendall(data)

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


def _rss_peak(pid: int, stop: threading.Event, out: list[int]) -> None:
    proc = psutil.Process(pid)
    while not stop.is_set():
        out.append(proc.memory_info().rss)
        time.sleep(0.005)


@pytest.mark.slow
def test_10mb_byte_exact_both_ways_slow_reader_bounded_memory(
    supervisor: Supervisor, echo_backend: HostPort
) -> None:
    vip = HostPort(fresh_ip(), 8080)
    child = supervisor.spawn("dnat", lbbench_argv("serve", "dnat", "--listen", str(vip),
                                                  "--backend", str(echo_backend)))
    wait_port(vip)
    time.sleep(0.2)
    payload = os.urandom(10 * 1024 * 1024)
    samples: list[int] = []
    stop = threading.Event()
    sampler = threading.Thread(target=_rss_peak, args=(child.pid, stop, samples))
    with socket.create_connection((vip.host, vip.port), timeout=30) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        baseline = psutil.Process(child.pid).memory_info().rss
        sampler.start()

        def upload() -> None:
            s.sendall(payload)
            s.shutdown(socket.SHUT_WR)  # half-close: the echo must still flow back

        writer = threading.Thread(target=upload)
        writer.start()
        received = bytearray()
        while chunk := s.recv(32768):  # slow reader: ~10 MB/s at most
            received += chunk
            time.sleep(0.003)
        writer.join(30)
    stop.set()
    sampler.join()
    assert len(received) == len(payload)
    assert hashlib.sha256(received).digest() == hashlib.sha256(payload).digest()
    growth = max(samples) - baseline
    # With flow control it grows ~0.5 MiB here; without, 6-8 MiB (most of the 10 MB, less
    # what the kernel's socket buffers absorb) sits in its write buffer.
    assert growth < 3 * 1024 * 1024, f"forwarder RSS grew by {growth / 2**20:.1f} MiB"
    assert child.alive()
