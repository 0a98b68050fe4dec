"""One run: the same keep-alive HTTP load direct to one pod, through userspace-dnat, through
kernel-nftables, kernel-iptables and HAProxy in `mode tcp` (each in front of that one pod).

Needs the private namespace for the kernel rules, so run it through netns_argv::

    .venv/bin/python -c "import sys,subprocess; from lbbench.system.netns import netns_argv; \
        sys.exit(subprocess.call(netns_argv([sys.executable, 'tests/benchmarks/l4_compare.py'])))"

Load: wrk, 1 thread, 16 keep-alive connections; 1 s warm-up each, then 3 interleaved rounds of 3 s
per target. Prints one JSON object per target: medians over the rounds of requests/s, p50/p99
(ms) and CPU seconds of the front end's processes (the kernel's NAT work has no process of its own).
"""

from __future__ import annotations

import asyncio
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

from lbbench.cluster.standalone import fresh_ip, start_pod, wait_port
from lbbench.frontends.base import Frontend, FrontendPlan
from lbbench.frontends.dnat.frontend import UserspaceDnat
from lbbench.frontends.kernel.iptables import KernelIptables
from lbbench.frontends.kernel.nftables import KernelNftables
from lbbench.model.addresses import HostPort
from lbbench.model.service import Endpoint, ServiceSpec
from lbbench.system.netns import find_tool, in_private_netns
from lbbench.system.procs import Supervisor

CONNECTIONS = 16
DURATION_S = 3
ROUNDS = 3


def _ms(value: str, unit: str) -> float:
    return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]


async def wrk(sup: Supervisor, addr: HostPort, duration_s: int) -> dict[str, float]:
    wrk_bin = find_tool("wrk")
    assert wrk_bin is not None, "wrk is not installed"
    child = sup.spawn("wrk", [wrk_bin, "-t1", f"-c{CONNECTIONS}", f"-d{duration_s}s", "--latency",
                              f"http://{addr}/"], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
    out, _ = await asyncio.to_thread(child.popen.communicate)
    text = out.decode()
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))  # type: ignore[union-attr]
    pct = {m.group(1): _ms(m.group(2), m.group(3)) for m in re.finditer(r"^\s+(\d+)%\s+([\d.]+)(us|ms|s)", text, re.M)}
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)|Socket errors: (.*)", text)
    return {"rps": rps, "p50_ms": pct["50"], "p99_ms": pct["99"], "errors": 1.0 if errors else 0.0}


def cpu_s(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            t = psutil.Process(pid).cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


async def measure(sup: Supervisor, addr: HostPort, pids: list[int]) -> dict[str, float]:
    before = cpu_s(pids)
    result = await wrk(sup, addr, DURATION_S)
    return {**result, "frontend_cpu_s": round(cpu_s(pids) - before, 3)}


def median_row(name: str, rounds: list[dict[str, float]]) -> dict[str, Any]:
    row: dict[str, Any] = {"target": name}
    for key in ("rps", "p50_ms", "p99_ms", "frontend_cpu_s"):
        row[key] = statistics.median(r[key] for r in rounds)
    row["rps_rounds"] = [r["rps"] for r in rounds]
    row["errors"] = sum(r["errors"] for r in rounds)
    return row


def haproxy_config(listen: HostPort, pod: HostPort) -> str:
    return "\n".join([
        "global", "  maxconn 4096", "  nbthread 1",
        "defaults", "  mode tcp", "  timeout connect 1s", "  timeout client 30s", "  timeout server 30s",
        "frontend f", f"  bind {listen}", "  default_backend b",
        "backend b", "  balance random", f"  server p0 {pod}", "",
    ])


async def start_targets(sup: Supervisor, pod: HostPort, tmp: Path) -> dict[str, tuple[HostPort, list[int]]]:
    """Every front end up at once, each in front of the same single pod."""
    targets: dict[str, tuple[HostPort, list[int]]] = {"direct": (pod, [])}
    endpoints = (Endpoint("pod-0", pod.host, pod.port),)
    for cls in (UserspaceDnat, KernelNftables, KernelIptables):
        spec = ServiceSpec("web", "default", "ClusterIP", fresh_ip(), 80, 8080)
        fe: Frontend = cls(FrontendPlan((spec,), in_netns=True), sup)
        await fe.start()
        await fe.update_endpoints(spec.key, endpoints)
        targets[cls.name] = (fe.entrypoint(spec.key).addr, fe.pids())
    haproxy = find_tool("haproxy")
    if haproxy is not None:
        listen = HostPort(fresh_ip(), 80)
        cfg = tmp / "haproxy.cfg"
        cfg.write_text(haproxy_config(listen, pod))
        child = sup.spawn("haproxy", [haproxy, "-db", "-f", str(cfg)], stdin=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
        await asyncio.to_thread(wait_port, listen)
        targets["haproxy-tcp"] = (listen, [child.pid])
    return targets


async def main() -> list[dict[str, Any]]:
    assert in_private_netns(), "run through netns_argv (kernel-nftables needs the private namespace)"
    sup = Supervisor()
    try:
        _, pod = await asyncio.to_thread(start_pod, sup, "pod-0", slots=64)
        with tempfile.TemporaryDirectory() as tmp:
            targets = await start_targets(sup, pod, Path(tmp))
            for addr, _ in targets.values():
                await wrk(sup, addr, 1)  # warm-up
            # Interleaved rounds, so a neighbour's burst on this shared machine hits every target alike.
            rounds: dict[str, list[dict[str, float]]] = {name: [] for name in targets}
            for _ in range(ROUNDS):
                for name, (addr, pids) in targets.items():
                    rounds[name].append(await measure(sup, addr, pids))
        return [median_row(name, r) for name, r in rounds.items()]
    finally:
        await sup.aclose()  # front ends' processes and the kernel's namespace go with it


if __name__ == "__main__":
    started = time.monotonic()
    for row in asyncio.run(main()):
        print(json.dumps(row))
    print(json.dumps({"wall_s": round(time.monotonic() - started, 1), "cpus": psutil.cpu_count(),
                      "load_avg_1m": psutil.getloadavg()[0]}), file=sys.stderr)
