"""The L4 and L7 groups: every peer up at once in front of the same backend, loaded alike by wrk.

Rounds are interleaved (every peer once per round, the order rotated each round) so that a
neighbour's burst on a shared machine hits all peers alike; each round records requests/s,
wrk's p50/p99, and the CPU seconds of the peer's processes (children included) and of the
backend, and the namespace's TCP counters around it (SYN retransmits: connection attempts the
kernel dropped and the client had to repeat, which make a peer look slower without an error).
A peer that cannot run here is skipped with the reason; one that starts but does not answer
200 is skipped too, with what it said.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import subprocess
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from lbbench.bench.peers import Wrk, WrkResult
from lbbench.bench.stats import Stat, stat
from lbbench.cluster.standalone import fresh_ip
from lbbench.frontends.base import Frontend, FrontendPlan
from lbbench.frontends.dnat.frontend import UserspaceDnat
from lbbench.frontends.registry import frontend_class
from lbbench.model.addresses import HostPort
from lbbench.model.names import KERNEL_FRONTENDS
from lbbench.model.proxy import ProxySettings
from lbbench.model.service import Endpoint, ServiceSpec
from lbbench.system import proctree, tcpstat
from lbbench.system.netns import find_tool, in_private_netns, netns_unavailable_reason
from lbbench.system.procs import Supervisor

L4_PEERS = ("direct", "userspace-dnat", "haproxy-tcp", "kernel-nftables", "ebpf-socketlb")
L7_PEERS = ("direct", "l7-proxy", "haproxy", "nginx", "httpd")
SERVICE_PORT = 8080  # >= 1024: no root needed outside lbbench's namespace
START_TIMEOUT_S = 30.0
# userspace-dnat and l7-proxy worker processes: one per usable CPU, as HAProxy 2.6's default nbthread
# (like for like: cores against cores)
DNAT_WORKERS = len(os.sched_getaffinity(0))
READY_TIMEOUT_S = 10.0
# Throughput, not queueing, is measured: no per-backend limit, so nothing waits in a proxy's queue,
# and one queue per worker changes nothing (see lbbench.frontends.proxy.workers).
L7_SETTINGS = ProxySettings(maxconn=0, workers=DNAT_WORKERS)

Pids = Callable[[], list[int]]
Wrap = Callable[[list[str]], list[str]]


async def _nothing() -> None:
    return None


def _no_pids() -> list[int]:
    return []


@dataclass
class Target:
    """One peer as the client sees it: where to send, what Host, which processes are its own."""

    name: str
    addr: HostPort
    host_header: str | None = None
    pids: Pids = _no_pids
    stop: Callable[[], Awaitable[None]] = _nothing
    note: str = ""
    own_process: bool = False  # False: direct, or the kernel doing the work
    client_wrap: Wrap | None = None  # how the client must start to be served (ebpf-socketlb: in its cgroup)
    client_source: str | None = None  # the client's own source address toward this peer (see own_source)
    processes: list[dict[str, int | str]] = field(default_factory=list)  # name and threads, at start


@dataclass
class Round:
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: dict[str, int]
    frontend_cpu_s: float
    backend_cpu_s: float
    client_cpu_s: float = 0.0  # wrk's: where socket-level balancing (and the client side of NAT) is charged
    tcp: dict[str, int] = field(default_factory=dict)  # the namespace's TCP counters over the round (tcpstat)


@dataclass
class GroupRun:
    targets: list[Target] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    rounds: dict[str, list[Round]] = field(default_factory=dict)


# -- starting peers ------------------------------------------------------------------------------
async def http_ok(addr: HostPort, host: str | None, timeout_s: float = 1.0) -> str | None:
    """None if GET / answers 200, else what happened (status line or error)."""
    request = f"GET / HTTP/1.1\r\nHost: {host or addr}\r\nConnection: close\r\n\r\n".encode()
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(addr.host, addr.port), timeout_s)
    except (OSError, TimeoutError) as e:
        return f"connect: {e or type(e).__name__}"
    try:
        writer.write(request)
        line = await asyncio.wait_for(reader.readline(), timeout_s)
        with contextlib.suppress(OSError, TimeoutError, asyncio.IncompleteReadError):
            await asyncio.wait_for(reader.read(), timeout_s)
    except (OSError, TimeoutError) as e:
        return f"request: {e or type(e).__name__}"
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    status = line.decode(errors="replace").strip()
    return None if status.split(" ")[1:2] == ["200"] else (status or "no answer")


async def wait_ok(target: Target, timeout_s: float = READY_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while (why := await http_ok(target.addr, target.host_header)) is not None:
        if time.monotonic() > deadline:
            raise RuntimeError(f"does not answer 200 through {target.addr} within {timeout_s:g} s ({why})")
        await asyncio.sleep(0.05)


def skip_reason(name: str) -> str | None:
    """Why front end `name` cannot run in this process, or None."""
    cls = frontend_class(name)
    if isinstance(cls, str):
        return cls
    if name in KERNEL_FRONTENDS and not in_private_netns():
        why = netns_unavailable_reason()
        return (f"needs lbbench's private network namespace ({why})" if why else
                "needs lbbench's private network namespace (run without --no-netns)")
    return cls.unavailable_reason()


def l4_plan(backend: HostPort) -> tuple[FrontendPlan, ServiceSpec]:
    spec = ServiceSpec("web", "bench", "ClusterIP", fresh_ip(), SERVICE_PORT, backend.port)
    return FrontendPlan((spec,), in_netns=in_private_netns()), spec


def l7_plan(backend: HostPort) -> tuple[FrontendPlan, ServiceSpec]:
    spec = ServiceSpec("web", "bench", "ClusterIP", fresh_ip(), SERVICE_PORT, backend.port)
    plan = FrontendPlan((spec,), ingress_ip=fresh_ip(), ingress_port=SERVICE_PORT, proxy=L7_SETTINGS,
                        in_netns=in_private_netns())
    return plan, spec


async def start_frontend(name: str, sup: Supervisor, backend: HostPort, layer: str) -> Target:
    """Start front end `name` in front of `backend`; raises with the reason if it cannot serve."""
    cls = frontend_class(name)
    assert not isinstance(cls, str)
    plan, spec = l4_plan(backend) if layer == "l4" else l7_plan(backend)
    fe: Frontend = cls(plan, sup, workers=DNAT_WORKERS) if issubclass(cls, UserspaceDnat) else cls(plan, sup)
    try:
        await asyncio.wait_for(fe.start(), START_TIMEOUT_S)
        await asyncio.wait_for(fe.update_endpoints(spec.key, (Endpoint("pod-0", backend.host, backend.port),)),
                               START_TIMEOUT_S)
        entry = fe.entrypoint(spec.key)
        wrap = fe.client_wrap()
        note = "kernel NAT: no process of its own (its CPU is charged to client and backend)" \
            if name in KERNEL_FRONTENDS else ""
        if wrap is not None:
            note = ("balanced in connect() for the client's cgroup: no process of its own (its CPU is the "
                    "client's); the client connects to the pod itself, so it shares direct's source address (no "
                    "NAT, no conntrack tuple to clash); ready once its maps are written: the warm-up is its check")
        target = Target(name, entry.addr, entry.host_header, fe.pids, fe.stop, note, own_process=bool(fe.pids()),
                        processes=proctree.shape(fe.pids()), client_wrap=wrap)
        if wrap is None:  # this process is outside a cgroup-scoped front end's reach
            await wait_ok(target)
    except BaseException:
        with contextlib.suppress(Exception):
            await fe.stop()
        raise
    return target


async def start_peers(names: Sequence[str], sup: Supervisor, backend: HostPort, layer: str,
                      log: Callable[[str], None]) -> GroupRun:
    run = GroupRun()
    for name in names:
        if name == "direct":
            run.targets.append(Target("direct", backend, note="no front end: the client talks to the backend"))
            continue
        if (why := skip_reason(name)) is not None:
            run.skipped[name] = why
            log(f"{layer}: {name} skipped: {why}")
            continue
        try:
            run.targets.append(await start_frontend(name, sup, backend, layer))
        except Exception as e:  # any failure of one peer must not take the others down
            run.skipped[name] = f"failed to start: {_one_line(e)}"
            log(f"{layer}: {name} skipped: {run.skipped[name]}")
    for t in run.targets:
        if t.client_wrap is None:
            t.client_source = await own_source(sup, t.addr)
    direct = next((t.client_source for t in run.targets if t.addr == backend), None)
    for t in run.targets:
        if t.client_wrap is not None:  # a socket-level balancer's client connects to the pod itself: the pod's route
            t.client_source = direct
    return run


async def own_source(sup: Supervisor, addr: HostPort) -> str | None:
    """A source address of its own for connections to `addr`: a local route with ``src``.

    With new connections at full speed, a client reaching one pod directly and through a
    DNATed VIP from one source address makes conntrack/TIME_WAIT tuples clash (the DNATed
    connection's reply tuple is the direct one's), and SYNs are dropped. Each peer's client
    gets its own source, so one peer's churn does not cost another. Only inside lbbench's
    private namespace (routes are never touched on the host); None elsewhere or without ``ip``.
    """
    ip = find_tool("ip")
    if not in_private_netns() or ip is None:
        return None
    src = fresh_ip()
    child = sup.spawn("ip-route", [ip, "route", "replace", "local", f"{addr.host}/32", "dev", "lo", "src", src,
                                   "table", "local"], stdin=subprocess.DEVNULL)
    return src if await child.wait() == 0 else None


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}".rstrip(": ")


# -- measuring -----------------------------------------------------------------------------------
async def measure_once(wrk: Wrk, target: Target, backend_pids: Pids, duration_s: float) -> Round:
    fe0, be0 = proctree.cpu_s(target.pids()), proctree.cpu_s(backend_pids())
    tcp0 = tcpstat.read_tcp_counters()
    result: WrkResult = await wrk.run(target.addr, target.host_header, duration_s, target.client_wrap)
    tcp1 = tcpstat.read_tcp_counters()
    fe1, be1 = proctree.cpu_s(target.pids()), proctree.cpu_s(backend_pids())
    return Round(result.rps, result.p50_ms, result.p99_ms, result.requests, result.errors,
                 proctree.used_s(fe0, fe1), proctree.used_s(be0, be1), result.client_cpu_s,
                 tcpstat.delta(tcp0, tcp1))


async def measure(run: GroupRun, wrk: Wrk, backend_pids: Pids, duration_s: float, repeats: int,
                  warmup_s: float, log: Callable[[str], None]) -> None:
    """Warm every peer up, then `repeats` interleaved rounds, each in a rotated order.

    A peer whose client run fails (wrk without a report, ...) is dropped with the reason.
    """
    for t in list(run.targets):
        try:
            warm = await wrk.run(t.addr, t.host_header, warmup_s, t.client_wrap)
            if warm.requests == 0 or warm.error_count >= warm.requests:
                raise RuntimeError(f"no request succeeded ({warm.errors or 'no requests'})")
        except Exception as e:
            await _drop(run, t, f"warm-up failed: {_one_line(e)}", log)
    run.rounds = {t.name: [] for t in run.targets}
    for r in range(repeats):
        n = len(run.targets)
        order = run.targets[r % n:] + run.targets[: r % n] if n else []
        for t in order:
            try:
                got = await measure_once(wrk, t, backend_pids, duration_s)
            except Exception as e:
                await _drop(run, t, f"failed during round {r + 1}: {_one_line(e)}", log)
                continue
            run.rounds[t.name].append(got)
            log(f"round {r + 1}/{repeats} {t.name}: {got.rps:,.0f} req/s, p99 {got.p99_ms:.2f} ms")


async def _drop(run: GroupRun, target: Target, why: str, log: Callable[[str], None]) -> None:
    run.targets.remove(target)
    run.rounds.pop(target.name, None)
    run.skipped[target.name] = why
    log(f"{target.name} dropped: {why}")
    with contextlib.suppress(Exception):
        await target.stop()


async def stop_all(run: GroupRun) -> None:
    for t in run.targets:
        with contextlib.suppress(Exception):
            await t.stop()


# -- summarising ---------------------------------------------------------------------------------
def per_10k(cpu_s: float, requests: int) -> float:
    return cpu_s / requests * 10_000 if requests > 0 else math.nan


def _finite(values: Sequence[float]) -> list[float]:
    return [v for v in values if math.isfinite(v)]


def stat_or_none(values: Sequence[float]) -> Stat | None:
    vals = _finite(values)
    return stat(vals) if vals else None


def peer_figures(target: Target, rounds: Sequence[Round]) -> dict[str, Any]:
    errors: dict[str, int] = {}
    for r in rounds:
        for k, v in r.errors.items():
            errors[k] = errors.get(k, 0) + v
    tcp: dict[str, int] = {}
    for r in rounds:
        for k, v in r.tcp.items():
            tcp[k] = tcp.get(k, 0) + v
    fe_cpu = [per_10k(r.frontend_cpu_s, r.requests) for r in rounds] if target.own_process else []
    return {
        "status": "ok",
        "address": str(target.addr),
        "host_header": target.host_header,
        "rps": stat([r.rps for r in rounds]),
        "p50_ms": stat_or_none([r.p50_ms for r in rounds]),
        "p99_ms": stat_or_none([r.p99_ms for r in rounds]),
        "requests": sum(r.requests for r in rounds),
        "errors": errors,
        "tcp": tcp,  # summed over the rounds; {} where /proc/net cannot be read
        "frontend_cpu_s_per_10k": stat_or_none(fe_cpu),
        "backend_cpu_s_per_10k": stat_or_none([per_10k(r.backend_cpu_s, r.requests) for r in rounds]),
        "client_cpu_s_per_10k": stat_or_none([per_10k(r.client_cpu_s, r.requests) for r in rounds]),
        "note": target.note,
        "client_source": target.client_source,
        "processes": target.processes,
    }


def group_figures(run: GroupRun, peers: Sequence[str]) -> dict[str, Any]:
    """Every peer in the requested order: its figures, or skipped with the reason."""
    by_name = {t.name: t for t in run.targets}
    out: dict[str, Any] = {}
    for name in peers:
        if name in run.skipped:
            out[name] = {"status": "skipped", "reason": run.skipped[name]}
        elif name in by_name and run.rounds.get(name):
            out[name] = peer_figures(by_name[name], run.rounds[name])
    return out
