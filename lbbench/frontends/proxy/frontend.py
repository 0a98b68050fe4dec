"""The `l7-proxy` front end: lbbench's queueing HTTP/1.1 reverse proxy (the Ingress) as a child process.

The proxy itself lives in this package's modules, one responsibility each:
  app       the process: listeners, pools, timeouts sweeper, control messages, shutdown
  request   reading requests (llhttp, limits, routing)    client    the client protocol
  upstream  backend connections and their keep-alive pool queue     the managed queue,
  balance   the five balancers                             retries and ejection
  health    active checks        route     Ingress rules   http      message pieces
  backend   one backend's state  exchange  one request's state
  stats     /stats and /metrics  config    plan files and overrides
This module is the Frontend that runs the proxy as a child process (`lbbench serve proxy`,
whose flags are in lbbench.commands.serve.proxy) and talks to it over its control pipe.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, Literal

from lbbench.frontends.base import BackendHealth, Entrypoint, Frontend, FrontendPlan
from lbbench.model.addresses import HostPort, parse_hostport
from lbbench.model.service import Endpoint, ServiceType, endpoints_update
from lbbench.system.control import ChildChannel, ChildGone, Message
from lbbench.system.procs import Child, Supervisor, lbbench_argv
from lbbench.system.scratch import private_dir, write_private

READY_TIMEOUT_S = 20.0


class L7Proxy(Frontend):
    """The queueing L7 proxy as a front end: one child process, Endpoints over the control pipe."""

    name: ClassVar[str] = "l7-proxy"
    layer: ClassVar[Literal["l4", "l7"]] = "l7"

    @classmethod
    def unavailable_reason(cls) -> str | None:
        try:
            import httptools  # noqa: F401
            import uvloop  # noqa: F401
        except ImportError as e:
            return f"l7-proxy needs httptools and uvloop: {e}"
        return None

    def __init__(self, plan: FrontendPlan, supervisor: Supervisor) -> None:
        super().__init__(plan, supervisor)
        self.child: Child | None = None
        self.channel: ChildChannel | None = None
        self.listen: HostPort | None = None
        self.stats_addr: HostPort | None = None
        self.plan_file: Path | None = None
        self._tmpdir: str | None = None
        self._stats_conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        self._stats_lock = asyncio.Lock()

    async def start(self) -> None:
        from lbbench.frontends.proxy.config import plan_to_json

        if self.child is not None:
            return
        if self.plan.artifacts_dir is not None:
            self.plan.artifacts_dir.mkdir(parents=True, exist_ok=True)
            self.plan_file = self.plan.artifacts_dir / "l7-proxy-plan.json"
        else:
            self._tmpdir = str(private_dir("l7-proxy"))  # swept by the next run if this one is killed
            self.plan_file = Path(self._tmpdir) / "plan.json"
        write_private(self.plan_file, plan_to_json(self.plan))
        argv = lbbench_argv("serve", "proxy", "--plan", str(self.plan_file), "--stats", f"{self.plan.ingress_ip}:0")
        self.child = self.supervisor.spawn("l7-proxy", argv, stdout=subprocess.PIPE)
        self.channel, ready = await open_proxy(self.child, on_notice=self._on_notice)
        self.listen = parse_hostport(ready["listen"])
        self.stats_addr = parse_hostport(ready["stats"])

    def _on_notice(self, msg: Message) -> None:
        """The proxy's checks marked a backend down or up: on to the run, at the time the proxy knew."""
        event = msg.get("event")
        if event not in ("backend_down", "backend_up") or not isinstance(msg.get("at_monotonic_s"), float):
            return
        worker = f" (worker {msg['worker']})" if "worker" in msg else ""
        self.report_health(BackendHealth(msg["at_monotonic_s"], "down" if event == "backend_down" else "up",
                                         str(msg.get("backend", "")), f"{msg.get('why', '')}; {msg.get('addr', '')}"
                                         f"{worker}"))

    async def update_endpoints(self, service_key: str, endpoints: tuple[Endpoint, ...]) -> None:
        """Hand the proxy the Service's new Endpoints and wait until it applied them (or said why not)."""
        if self.channel is None:
            raise RuntimeError("l7-proxy is not running")
        await self.channel.request({"endpoints": endpoints_update(service_key, endpoints)})

    async def stop(self) -> None:
        if self._stats_conn is not None:
            self._stats_conn[1].close()
            self._stats_conn = None
        if self.child is not None:
            await self.child.stop(8.0)  # the proxy itself gives requests in progress 5 s
            self.child.close_pipes()
        if self.channel is not None:
            self.channel.close()
            self.channel = None
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None

    def entrypoint(self, service_key: str, via: ServiceType = "ClusterIP") -> Entrypoint:
        svc = next((s for s in self.plan.services if s.key == service_key), None)
        if svc is None:
            raise ValueError(f"l7-proxy: no Service {service_key!r} in the plan")
        addr = self.listen or HostPort(self.plan.ingress_ip, self.plan.ingress_port)
        if not self.plan.ingress_rules:
            return Entrypoint(addr, svc.dns_name)
        rule = next((r for r in self.plan.ingress_rules if r.service == service_key), None)
        if rule is None:
            raise ValueError(f"l7-proxy: no Ingress rule routes to {service_key!r}")
        if rule.host == "*":
            return Entrypoint(addr, None)
        return Entrypoint(addr, svc.name + rule.host[1:] if rule.host.startswith("*.") else rule.host)

    def pids(self) -> list[int]:
        return [self.child.pid] if self.child is not None and self.child.alive() else []

    async def counters(self) -> dict[str, float]:
        from lbbench.frontends.proxy.stats import flatten

        doc = await self.stats()
        return flatten(doc) if doc else {}

    async def stats(self) -> dict[str, Any]:
        """The proxy's /stats document over a kept-alive connection ({} when the proxy is gone)."""
        if self.stats_addr is None or self.child is None or not self.child.alive():
            return {}
        async with self._stats_lock:
            for _ in range(2):
                try:
                    return await asyncio.wait_for(self._get_stats(self.stats_addr), 5.0)
                except (OSError, TimeoutError, ValueError, asyncio.IncompleteReadError):
                    if self._stats_conn is not None:
                        self._stats_conn[1].close()
                        self._stats_conn = None
        return {}

    async def _get_stats(self, addr: HostPort) -> dict[str, Any]:
        if self._stats_conn is None:
            self._stats_conn = await asyncio.open_connection(addr.host, addr.port)
        from lbbench.frontends.proxy.stats import fetch

        return await fetch(*self._stats_conn)


async def open_proxy(child: Child, name: str = "l7-proxy",
                     on_notice: Callable[[Message], None] | None = None) -> tuple[ChildChannel, dict[str, Any]]:
    """The control channel of a proxy process, and its readiness announcement (listen and stats addresses);
    `on_notice` gets what it says of its own accord afterwards (backend_down / backend_up)."""
    channel = await ChildChannel.open(child, name)
    channel.on_notice = on_notice
    try:
        ready = await channel.announcement(READY_TIMEOUT_S)
    except TimeoutError as e:
        channel.close()
        raise RuntimeError(str(e)) from None
    except ChildGone:
        ready = {}
    if ready.get("event") != "ready":
        channel.close()
        raise RuntimeError(f"{name} failed to start (exit code {child.poll()}); see its stderr above")
    return channel, ready
