"""L4 front-end scenarios shared by tests/test_dnat.py and tests/test_nftables.py.

Each scenario starts real pods, a front end (userspace-dnat or kernel-nftables) and real
client connections, and returns plain JSON-able results; the tests assert on them. Kernel
scenarios must run inside lbbench's private namespace, so the tests run this file as a
script through ``netns_argv``::

    python tests/l4_scenarios.py SCENARIO FRONTEND   ->  one JSON object on stdout
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import json
import signal
import sys
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lbbench.cluster.standalone import fresh_ip, start_pod
from lbbench.frontends.base import Frontend, FrontendPlan
from lbbench.model.addresses import HostPort
from lbbench.model.service import Endpoint, ServiceSpec, ServiceType
from lbbench.system import cgroup
from lbbench.system.procs import Child, Supervisor

POD_READY_TIMEOUT_S = 90.0  # as the sweep tests: a pod can take 20 s to import on a busy machine

Result = dict[str, Any]
cluster_home: dict[int, Path | None] = {}  # front end -> the cgroup this process left to be its client


# ---------------------------------------------------------------------------------------
# A minimal HTTP/1.1 client: which pod served each request of a connection


@dataclass
class Conn:
    pods: list[str]
    error: str | None = None  # "refused", "reset", "eof", "timeout" or another OSError name


async def _read_response(reader: asyncio.StreamReader) -> str:
    head = await reader.readuntil(b"\r\n\r\n")
    headers = {}
    for line in head.decode("latin-1").split("\r\n")[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    await reader.readexactly(int(headers.get("content-length", "0")))
    return headers.get("x-pod", "?")


def _error_name(e: BaseException) -> str:
    if isinstance(e, ConnectionRefusedError):
        return "refused"
    if isinstance(e, ConnectionResetError | BrokenPipeError):
        return "reset"
    if isinstance(e, asyncio.IncompleteReadError):
        return "eof"
    if isinstance(e, TimeoutError):
        return "timeout"
    return type(e).__name__


async def http_conn(addr: HostPort, requests: int = 1, path: str = "/", timeout_s: float = 10.0) -> Conn:
    """One TCP connection doing `requests` GETs (keep-alive; the last says close)."""
    conn = Conn([])
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(timeout_s):
            reader, writer = await asyncio.open_connection(addr.host, addr.port)
            for i in range(requests):
                close = "close" if i == requests - 1 else "keep-alive"
                writer.write(f"GET {path} HTTP/1.1\r\nHost: svc\r\nConnection: {close}\r\n\r\n".encode())
                conn.pods.append(await _read_response(reader))
    except (OSError, asyncio.IncompleteReadError, TimeoutError) as e:
        conn.error = _error_name(e)
    finally:
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
    return conn


async def many_conns(addr: HostPort, n: int, requests: int = 1, concurrency: int = 16, path: str = "/") -> list[Conn]:
    sem = asyncio.Semaphore(concurrency)

    async def one() -> Conn:
        async with sem:
            return await http_conn(addr, requests, path)

    return list(await asyncio.gather(*(one() for _ in range(n))))


def summarize(conns: list[Conn]) -> Result:
    served = collections.Counter(p for c in conns if c.error is None for p in c.pods)
    errors = collections.Counter(c.error for c in conns if c.error is not None)
    return {"served": dict(served), "errors": dict(errors), "n": len(conns)}


# ---------------------------------------------------------------------------------------
# Setup


def frontend_class(name: str) -> type[Frontend]:
    if name == "userspace-dnat":
        from lbbench.frontends.dnat.frontend import UserspaceDnat

        return UserspaceDnat
    if name == "kernel-nftables":
        from lbbench.frontends.kernel.nftables import KernelNftables

        return KernelNftables
    if name == "ebpf-socketlb":
        from lbbench.frontends.kernel.ebpf import EbpfSocketLb

        return EbpfSocketLb
    if name == "kernel-iptables":
        from lbbench.frontends.kernel.iptables import KernelIptables

        cls: type[Frontend] = KernelIptables
        return cls
    raise ValueError(f"unknown L4 front end {name!r}")


@dataclass
class Cluster:
    sup: Supervisor
    pods: list[tuple[Child, HostPort]]
    spec: ServiceSpec
    fe: Frontend

    def endpoints(self, skip: int | None = None) -> tuple[Endpoint, ...]:
        return tuple(Endpoint(f"pod-{i}", a.host, a.port, f"node-{i % 2}")
                     for i, (_, a) in enumerate(self.pods) if i != skip)


async def start_cluster(sup: Supervisor, frontend: str, n_pods: int = 4, slots: int = 1,
                        service_type: str = "ClusterIP", seed: int = 1) -> Cluster:
    loop = asyncio.get_running_loop()
    # Four pods import at once: on a busy machine that takes more than start_pod's default 10 s.
    start = functools.partial(start_pod, sup, slots=slots, ready_timeout_s=POD_READY_TIMEOUT_S)
    pods = await asyncio.gather(*(loop.run_in_executor(None, start, f"pod-{i}") for i in range(n_pods)))
    nodes = (fresh_ip(), fresh_ip()) if service_type != "ClusterIP" else ()
    spec = ServiceSpec("web", "default", service_type, fresh_ip(), 80, 8080,  # type: ignore[arg-type]
                       node_port=30080 if nodes else None, node_ips=nodes,
                       lb_ip=fresh_ip() if service_type == "LoadBalancer" else None)
    in_netns = frontend.startswith("kernel-")
    fe = frontend_class(frontend)(FrontendPlan((spec,), seed=seed, in_netns=in_netns), sup)
    await fe.start()
    if (cg := fe.client_cgroup()) is not None:  # ebpf-socketlb serves its cgroup: this process becomes a client
        cluster_home[id(fe)] = cgroup.current()
        cgroup.move_self(cg)
    cluster = Cluster(sup, list(pods), spec, fe)
    await fe.update_endpoints(spec.key, cluster.endpoints())
    return cluster


async def drained(fe: Frontend, timeout_s: float = 5.0) -> bool | None:
    """userspace-dnat: do all relayed connections close once the clients are done? (None: no such counter)"""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        active = (await fe.counters()).get("connections_active")
        if active is None or active == 0:
            return None if active is None else True
        if asyncio.get_running_loop().time() > deadline:
            return False
        await asyncio.sleep(0.05)


async def _with_cluster(frontend: str, body: Callable[[Cluster], Awaitable[Result]], **kw: Any) -> Result:
    sup = Supervisor()
    cluster: Cluster | None = None
    try:
        cluster = await start_cluster(sup, frontend, **kw)
        result = await body(cluster)
        result["counters"] = await cluster.fe.counters()
        return result
    finally:
        if cluster is not None:
            if (home := cluster_home.pop(id(cluster.fe), None)) is not None:
                cgroup.move_self(home)  # out before the front end removes (and kills what is in) its cgroup
            await cluster.fe.stop()
        await sup.aclose()


# ---------------------------------------------------------------------------------------
# Scenarios


async def uniformity(frontend: str, n: int = 2000) -> Result:
    """n new connections (one request each) and 200 keep-alive connections of 2 requests."""

    async def body(c: Cluster) -> Result:
        addr = c.fe.entrypoint(c.spec.key).addr
        fresh = await many_conns(addr, n)
        keepalive = await many_conns(addr, 200, requests=2)
        return {"new": summarize(fresh), "keepalive": [k.pods for k in keepalive if k.error is None],
                "keepalive_errors": sum(1 for k in keepalive if k.error is not None), "drained": await drained(c.fe)}

    return await _with_cluster(frontend, body)


async def conntrack(frontend: str) -> Result:
    """An established connection keeps its pod after that pod leaves the endpoint table."""

    async def body(c: Cluster) -> Result:
        addr = c.fe.entrypoint(c.spec.key).addr
        sticky: list[str] = []
        reader, writer = await asyncio.open_connection(addr.host, addr.port)
        try:
            for i in range(3):
                writer.write(b"GET / HTTP/1.1\r\nHost: svc\r\n\r\n")
                sticky.append(await _read_response(reader))
                if i == 0:  # the pod leaves the Service, the connection stays
                    own = int(sticky[0].split("-")[1])
                    await c.fe.update_endpoints(c.spec.key, c.endpoints(skip=own))
        finally:
            writer.close()
            await writer.wait_closed()
        return {"sticky": sticky, "after": summarize(await many_conns(addr, 200))}

    return await _with_cluster(frontend, body)


async def dead_endpoint(frontend: str) -> Result:
    """SIGKILL one of 4 pods: in-flight requests on it fail; new connections that pick it
    fail until the (late) Endpoints sync, then none do."""

    async def body(c: Cluster) -> Result:
        addr = c.fe.entrypoint(c.spec.key).addr
        victim, _ = c.pods[0]
        in_flight = [asyncio.create_task(http_conn(addr, path="/?delay=2s")) for _ in range(40)]
        await asyncio.sleep(1.0)  # every request has reached its pod
        victim.signal(signal.SIGKILL)
        await victim.wait()
        flight = [await t for t in in_flight]
        before_sync = await many_conns(addr, 400)
        await c.fe.update_endpoints(c.spec.key, c.endpoints(skip=0))
        after_sync = await many_conns(addr, 400)
        return {"in_flight": summarize(flight), "before_sync": summarize(before_sync),
                "after_sync": summarize(after_sync)}

    return await _with_cluster(frontend, body, slots=64)


async def service_types(frontend: str) -> Result:
    """The same Service reached as ClusterIP, on each node's NodePort, and via the LB IP."""

    async def body(c: Cluster) -> Result:
        spec = c.spec
        out: Result = {"ClusterIP": summarize(await many_conns(c.fe.entrypoint(spec.key).addr, 40))}
        out["NodePort"] = {ip: summarize(await many_conns(HostPort(ip, spec.node_port or 0), 40))
                           for ip in spec.node_ips}
        out["LoadBalancer"] = summarize(await many_conns(c.fe.entrypoint(spec.key, "LoadBalancer").addr, 80))
        vias: tuple[ServiceType, ...] = ("ClusterIP", "NodePort", "LoadBalancer")
        out["entrypoints"] = {via: str(c.fe.entrypoint(spec.key, via).addr) for via in vias}
        return out

    return await _with_cluster(frontend, body, service_type="LoadBalancer")


async def reject_trap(frontend: str) -> Result:
    """Kernel only: a listener on the ClusterIP itself shows whether the rules act.

    With no endpoints the kernel's reject answers (the trap is never reached); with
    endpoints every connection is DNATed to a pod (the trap is never reached either).
    """
    sup = Supervisor()
    fe: Frontend | None = None
    trap_hits = 0
    try:
        _, pod = await asyncio.get_running_loop().run_in_executor(
            None, lambda: start_pod(sup, "pod-0", ready_timeout_s=POD_READY_TIMEOUT_S))
        spec = ServiceSpec("trap", "default", "ClusterIP", fresh_ip(), 80, 8080)

        def on_trap(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            nonlocal trap_hits
            trap_hits += 1
            writer.close()

        trap = await asyncio.start_server(on_trap, spec.cluster_ip, spec.port)
        addr = HostPort(spec.cluster_ip, spec.port)
        baseline = summarize(await many_conns(addr, 5))  # no rules yet: the trap answers
        hits_before_rules = trap_hits
        fe = frontend_class(frontend)(FrontendPlan((spec,), in_netns=True), sup)
        await fe.start()
        empty = summarize(await many_conns(addr, 20))
        await fe.update_endpoints(spec.key, (Endpoint("pod-0", pod.host, pod.port),))
        full = summarize(await many_conns(addr, 20))
        trap.close()
        await trap.wait_closed()
        return {"baseline": baseline, "hits_before_rules": hits_before_rules, "empty": empty, "full": full,
                "trap_hits_with_rules": trap_hits - hits_before_rules}
    finally:
        if fe is not None:
            await fe.stop()
        await sup.aclose()


SCENARIOS: dict[str, Callable[[str], Coroutine[Any, Any, Result]]] = {
    "uniformity": uniformity,
    "conntrack": conntrack,
    "dead_endpoint": dead_endpoint,
    "service_types": service_types,
    "reject_trap": reject_trap,
}


def run_scenario(name: str, frontend: str) -> Result:
    import uvloop

    return uvloop.run(SCENARIOS[name](frontend))


if __name__ == "__main__":
    print(json.dumps(run_scenario(sys.argv[1], sys.argv[2])))
