"""The peers lbbench is measured against that are not front ends: wrk, and nginx as a fast target.

wrk is the one client of the L4 and L7 groups (keep-alive, fixed threads and connections),
so every peer of a group is loaded alike. It is stopped with SIGINT after the duration
(wrk then prints its report as if -d had run out), which allows fractional durations;
a Lua `done` hook prints the figures as one JSON line, so nothing is scraped from prose.
wrk is closed-loop: its latency percentiles suffer coordinated omission and are shown only
as a side figure; requests/s is the figure that is compared.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import math
import os
import re
import signal
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from lbbench.cluster.standalone import wait_port
from lbbench.model.addresses import HostPort, require_loopback
from lbbench.system import proctree
from lbbench.system.netns import find_tool
from lbbench.system.procs import Child, Supervisor

WRK_LUA = """\
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '\\n{"requests": %d, "duration_us": %d, "connect": %d, "read": %d, "write": %d, "status": %d, ' ..
    '"timeout": %d, "p50_us": %d, "p99_us": %d, "max_us": %d}\\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99), latency.max))
end
"""
_ERROR_KINDS = ("connect", "read", "write", "status", "timeout")
_EXIT_GRACE_S = 10.0


@dataclass(frozen=True)
class ClientSettings:
    """The load of the throughput groups: the same for every peer."""

    tool: str = "wrk"
    threads: int = 1
    connections: int = 16
    keepalive: bool = True  # False: "Connection: close", a new connection per request (wrk reconnects)


@dataclass(frozen=True)
class WrkResult:
    requests: int
    duration_s: float
    p50_ms: float
    p99_ms: float
    errors: dict[str, int] = field(default_factory=dict)
    client_cpu_s: float = 0.0  # wrk's own CPU seconds over the run

    @property
    def rps(self) -> float:
        return self.requests / self.duration_s if self.duration_s > 0 else 0.0

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())


def wrk_unavailable_reason() -> str | None:
    return None if find_tool("wrk") else "wrk not installed (apt-get install wrk)"


def parse_wrk_report(text: str) -> WrkResult:
    """The JSON line printed by WRK_LUA (the last one in wrk's output)."""
    lines = [ln for ln in text.splitlines() if ln.startswith("{")]
    if not lines:
        raise RuntimeError(f"wrk printed no report: {text.strip()[-300:] or '(nothing)'}")
    d = json.loads(lines[-1])
    return WrkResult(requests=int(d["requests"]), duration_s=d["duration_us"] / 1e6, p50_ms=d["p50_us"] / 1e3,
                     p99_ms=d["p99_us"] / 1e3, errors={k: int(d[k]) for k in _ERROR_KINDS if d[k]})


class Wrk:
    """Runs wrk under the supervisor with the Lua reporter."""

    def __init__(self, supervisor: Supervisor, workdir: Path, client: ClientSettings) -> None:
        path = find_tool("wrk")
        if path is None:
            raise RuntimeError("wrk not installed")
        self.path = path
        self.supervisor = supervisor
        self.client = client
        self.script = workdir / "lbbench-report.lua"
        self.script.write_text(WRK_LUA)

    def argv(self, addr: HostPort, host_header: str | None, duration_s: float) -> list[str]:
        require_loopback(addr.host, "wrk target")
        c = self.client
        # -d is a backstop only: SIGINT ends the run after duration_s.
        argv = [self.path, f"-t{c.threads}", f"-c{c.connections}", f"-d{math.ceil(duration_s) + 30}s",
                "--timeout", "5s", "-s", str(self.script)]
        if host_header:
            argv += ["-H", f"Host: {host_header}"]
        if not c.keepalive:
            argv += ["-H", "Connection: close"]
        return [*argv, f"http://{addr}/"]

    async def run(self, addr: HostPort, host_header: str | None, duration_s: float,
                  wrap: Callable[[list[str]], list[str]] | None = None) -> WrkResult:
        """One run; `wrap` turns wrk's argv into the one to spawn (e.g. joining a front end's cgroup first)."""
        argv = self.argv(addr, host_header, duration_s)
        child = self.supervisor.spawn("wrk", wrap(argv) if wrap else argv, stdin=subprocess.DEVNULL,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            out = asyncio.ensure_future(asyncio.to_thread(child.popen.communicate))
            await asyncio.sleep(duration_s)
            cpu_s = proctree.tree_cpu_s(child.pid) or 0.0  # before it exits and is reaped
            child.signal(signal.SIGINT)
            stdout, _ = await asyncio.wait_for(out, _EXIT_GRACE_S)
        finally:
            await _forget(self.supervisor, child)
        return dataclasses.replace(parse_wrk_report(stdout.decode(errors="replace")), client_cpu_s=cpu_s)


async def _forget(sup: Supervisor, child: Child) -> None:
    """Make sure a short-lived child is gone and drop it from the supervisor's list."""
    if child.alive():
        await child.stop(1.0)
    child.close_pipes()
    with contextlib.suppress(ValueError):
        sup.children.remove(child)


NGINX_STATIC = """\
daemon off;
master_process off;
{user}worker_processes 1;
pid {wd}/nginx.pid;
error_log stderr warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    keepalive_timeout 60s;
    keepalive_requests 100000000;
{temp}
    server {{
        listen {addr};
        location / {{ return 200 "ok\\n"; }}
    }}
}}
"""


class StaticNginx:
    """nginx answering 200 "ok" to every request, from one process: the fast target.

    One process (``master_process off``), so it is the same inside lbbench's namespace, as
    root or not; it never switches user.
    """

    def __init__(self, supervisor: Supervisor, addr: HostPort) -> None:
        require_loopback(addr.host, "nginx target")
        self.supervisor = supervisor
        self.addr = addr
        self.child: Child | None = None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None

    @staticmethod
    def unavailable_reason() -> str | None:
        return None if find_tool("nginx") else "nginx not installed (apt-get install nginx)"

    def config(self, workdir: Path) -> str:
        temp = "\n".join(f"    {t}_temp_path {workdir}/{t};" for t in ("client_body", "proxy", "fastcgi", "uwsgi",
                                                                        "scgi"))
        # As root nginx would chown its temp dirs to "nobody", which a user namespace may not map.
        user = "user root root;\n" if os.geteuid() == 0 else ""
        return NGINX_STATIC.format(wd=workdir, addr=self.addr, temp=temp, user=user)

    async def start(self) -> None:
        nginx = find_tool("nginx")
        if nginx is None:
            raise RuntimeError("nginx not installed")
        self._tmp = tempfile.TemporaryDirectory(prefix="lbbench-bench-nginx-")
        wd = Path(self._tmp.name)
        (wd / "nginx.conf").write_text(self.config(wd))
        log = (wd / "output.log").open("wb")
        with log:
            self.child = self.supervisor.spawn("nginx-target", [nginx, "-p", f"{wd}/", "-c", str(wd / "nginx.conf"),
                                                                "-e", "stderr"],
                                               stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        try:
            await asyncio.to_thread(wait_port, self.addr, 10.0)
        except TimeoutError:
            text = (wd / "output.log").read_text(errors="replace").strip()
            await self.stop()
            raise RuntimeError(f"nginx target did not start: {text[-300:] or '(no output)'}") from None

    def pids(self) -> list[int]:
        return [self.child.pid] if self.child is not None and self.child.alive() else []

    async def stop(self) -> None:
        child, self.child = self.child, None
        if child is not None:
            await _forget(self.supervisor, child)
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None


_VERSION_CMDS: dict[str, tuple[str, ...]] = {
    "wrk": ("-v",), "haproxy": ("-v",), "nginx": ("-v",), "apache2": ("-v",), "nft": ("--version",),
}


def tool_versions(supervisor: Supervisor) -> dict[str, str | None]:
    """First version-looking line of each peer tool (None if missing)."""
    out: dict[str, str | None] = {}
    for tool, args in _VERSION_CMDS.items():
        path = find_tool(tool)
        if path is None:
            out[tool] = None
            continue
        child = supervisor.spawn(f"{tool}-version", [path, *args], stdin=subprocess.DEVNULL,
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            text, _ = child.popen.communicate(timeout=5)
        except subprocess.TimeoutExpired:
            child.stop_sync(0.5)
            text = b""
        child.close_pipes()
        with contextlib.suppress(ValueError):
            supervisor.children.remove(child)
        m = re.search(r"\d+\.\d+(\.\d+)?\S*", text.decode(errors="replace"))
        out[tool] = m.group(0) if m else "unknown"
    return out
