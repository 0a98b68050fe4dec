"""One run: the same keep-alive HTTP load direct to one pod, through userspace-dnat, through
kernel-nftables and through HAProxy in `mode tcp` (each in front of that one pod).

Needs the private namespace for the kernel rules, so run it through netns_argv::

    .venv/bin/python -c "import sys,subprocess; from lbbench.netns import netns_argv; \
        sys.exit(subprocess.call(netns_argv([sys.executable, 'tests/benchmarks/l4_compare.py'])))"

Load: wrk, 1 thread, 16 keep-alive connections, 1 s warm-up then 4 s measured, per target.
Prints one JSON object per target: requests/s, p50/p99 (ms), CPU seconds of the front end.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

from lbbench.frontends.base import Endpoint, Frontend, FrontendPlan, ServiceSpec
from lbbench.frontends.dnat import UserspaceDnat
from lbbench.frontends.nftables import KernelNftables
from lbbench.netaddr import HostPort
from lbbench.netns import find_tool, in_private_netns
from lbbench.procs import Supervisor
from lbbench.testing import fresh_ip, start_pod, wait_port

CONNECTIONS = 16
DURATION_S = 4


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


async def measure(sup: Supervisor, name: str, addr: HostPort, pids: list[int]) -> dict[str, Any]:
    await wrk(sup, addr, 1)  # warm-up
    before = cpu_s(pids)
    result = await wrk(sup, addr, DURATION_S)
    return {"target": name, **result, "frontend_cpu_s": round(cpu_s(pids) - before, 3)}


def haproxy_config(listen: HostPort, pod: HostPort) -> str:
    return "\n".join([
        "global", "  maxconn 10000", "  nbthread 1",
        "defaults", "  mode tcp", "  timeout connect 1s", "  timeout client 30s", "  timeout server 30s",
        "frontend f", f"  bind {listen}", "  default_backend b",
        "backend b", "  balance random", f"  server p0 {pod}", "",
    ])


async def main() -> list[dict[str, Any]]:
    assert in_private_netns(), "run through netns_argv (kernel-nftables needs the private namespace)"
    sup = Supervisor()
    results: list[dict[str, Any]] = []
    frontends: list[Frontend] = []
    try:
        _, pod = await asyncio.to_thread(start_pod, sup, "pod-0", slots=64)
        endpoints = (Endpoint("pod-0", pod.host, pod.port),)
        results.append(await measure(sup, "direct", pod, []))
        for cls in (UserspaceDnat, KernelNftables):
            spec = ServiceSpec("web", "default", "ClusterIP", fresh_ip(), 80, 8080)
            fe = cls(FrontendPlan((spec,), in_netns=True), sup)
            frontends.append(fe)
            await fe.start()
            await fe.update_endpoints(spec.key, endpoints)
            results.append(await measure(sup, cls.name, fe.entrypoint(spec.key).addr, fe.pids()))
            await fe.stop()
        haproxy = find_tool("haproxy")
        if haproxy is not None:
            listen = HostPort(fresh_ip(), 80)
            with tempfile.TemporaryDirectory() as tmp:
                cfg = Path(tmp) / "haproxy.cfg"
                cfg.write_text(haproxy_config(listen, pod))
                child = sup.spawn("haproxy", [haproxy, "-db", "-f", str(cfg)], stdin=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
                await asyncio.to_thread(wait_port, listen)
                results.append(await measure(sup, "haproxy-tcp", listen, [child.pid]))
        return results
    finally:
        for fe in frontends:
            await fe.stop()
        await sup.aclose()


if __name__ == "__main__":
    started = time.monotonic()
    for row in asyncio.run(main()):
        print(json.dumps(row))
    print(json.dumps({"wall_s": round(time.monotonic() - started, 1), "cpus": psutil.cpu_count(),
                      "load_avg_1m": psutil.getloadavg()[0]}), file=sys.stderr)
