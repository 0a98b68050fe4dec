"""nginx (open source) as a reference Ingress.

Runs ``nginx -p <private dir> -c nginx.conf -e stderr`` with ``daemon off;``: the master
stays in the foreground in lbbench's process group and its workers are its children. An
Endpoints update rewrites the config and sends SIGHUP to the master, which is exactly what
``nginx -s reload`` does after reading the pid file; the update counts as done when a
worker of the new config answers the status virtual host.

ProxySettings -> nginx:
  maxconn            ``max_conns`` per upstream server (0: none), shared by the workers
                     through the upstream ``zone``.
  max_queue,         no equivalent: the request queue (``queue``) is NGINX Plus only. When
  queue_timeout_s    every server is at ``max_conns`` nginx answers 502 at once, so with a
                     small maxconn nginx sheds load where HAProxy and lbbench's proxy queue.
  balance            round-robin: (default); random: ``random``; least-conn: ``least_conn``;
                     p2c: ``random two least_conn``; peak-ewma: ``least_time`` is Plus only,
                     ``least_conn`` is used.
  retries            ``proxy_next_upstream error timeout`` + ``proxy_next_upstream_tries
                     retries+1`` (``off`` when 0).
  retry_idempotent   not separable: ``error``/``timeout`` also cover a connection reset
                     before the response header; nginx never retries a non-idempotent
                     request once sent (no ``non_idempotent``).
  eject_after        ``max_fails`` (passive), ejected for ``fail_timeout`` = one
                     health-check interval, at least 1 s.
  health             no active health checks in open source (``health_check`` is Plus).
  timeouts           ``proxy_connect_timeout``, ``proxy_read_timeout``/``proxy_send_timeout``,
                     ``keepalive_timeout``/``client_header_timeout``/``client_body_timeout``.
Keep-alive on both sides (upstream ``keepalive`` pool, HTTP/1.1, ``Connection ""``);
``keepalive_requests`` is raised so that keep-alive connections are not recycled every 1000
requests (HAProxy and lbbench's proxy do not recycle them). Host is passed through,
X-Forwarded-For added. A Service with no endpoints is served ``return 503`` (nginx refuses
an empty upstream), so requests fail at once. ``worker_processes auto``.

As root, workers run as ``nobody``. Inside an unprivileged user namespace (lbbench's
private netns: only uid 0 mapped, setgroups denied) an nginx master cannot start workers
(``initgroups`` fails), so nginx runs as a single process (``master_process off``, noted
as ``single_process`` in `counters()`). SIGHUP does not reload cleanly in that mode, so an
update starts a new nginx on the new config (listeners use ``reuseport``), waits until it
serves, then sends the old one SIGQUIT (graceful: it stops accepting, finishes its
requests): the HAProxy ``-sf`` way. So that connections waiting in the old listener's
accept queue are not reset, ``net.ipv4.tcp_migrate_req`` is set in that private netns.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import signal
import time
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar, Literal

import psutil

from lbbench.frontends.base import FrontendPlan
from lbbench.frontends.reference.common import (
    ReferenceFrontend,
    Route,
    binary_path,
    eject_s,
    hosts_in_order,
    ms,
    probe_generation,
    routes,
    safe_name,
)
from lbbench.model.addresses import HostPort
from lbbench.system.netns import in_private_netns
from lbbench.system.procs import Child, Supervisor
from lbbench.system.scratch import Kind
from lbbench.system.users import unprivileged_identity

_BALANCE = {"round-robin": "", "random": "random", "least-conn": "least_conn", "p2c": "random two least_conn",
            "peak-ewma": "least_conn"}
_TEMP_PATHS = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
UPSTREAM_KEEPALIVE = 64


class Nginx(ReferenceFrontend):
    name: ClassVar[str] = "nginx"
    layer: ClassVar[Literal["l4", "l7"]] = "l7"
    binary: ClassVar[str] = "nginx"
    scratch: ClassVar[Kind] = "nginx"
    workers_switch_user: ClassVar[bool] = True
    package: ClassVar[str] = "nginx"
    config_name: ClassVar[str] = "nginx.conf"

    def __init__(self, plan: FrontendPlan, supervisor: Supervisor) -> None:
        super().__init__(plan, supervisor)
        self._retiring: list[Child] = []  # replaced single processes finishing their requests

    @property
    def single_process(self) -> bool:
        """Root that cannot switch users (an unprivileged user namespace): no master/worker split."""
        return os.geteuid() == 0 and unprivileged_identity() is None

    def prepare_workdir(self, workdir: Path) -> None:
        (workdir / "tmp").mkdir()  # nginx creates the leaf temp dirs itself
        if self.single_process:
            self.prepare_single_process()

    def run_argv(self, config: Path) -> list[str]:
        return [binary_path(self.binary), "-p", f"{config.parent}/", "-c", str(config), "-e", "stderr"]

    def check_argv(self, config: Path) -> list[str]:
        return [binary_path(self.binary), "-t", "-q", "-p", f"{config.parent}/", "-c", str(config), "-e", "stderr"]

    async def apply_update(self, service_key: str) -> str:
        if not self.single_process:
            return await super().apply_update(service_key)
        old = self.child
        self.child = None
        try:
            self.spawn()
            await self.wait_serving()
        except BaseException:
            if self.child is not None:
                await self.child.stop(1.0)
            self.child = old
            raise
        if old is not None:
            old.signal(signal.SIGQUIT)
            self._retiring.append(old)
            await self._wait_unlisten(old.pid)
        self._retiring = [c for c in self._retiring if c.alive()]
        return "replace"

    async def _wait_unlisten(self, pid: int, timeout_s: float = 5.0) -> None:
        """Until the old single process closed its listener (it keeps finishing its requests)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                if not any(c.status == psutil.CONN_LISTEN for c in psutil.Process(pid).net_connections("tcp")):
                    return
            except psutil.Error:
                return
            await asyncio.sleep(0.002)

    def prepare_single_process(self) -> None:
        """Let the kernel hand connections queued on a closing reuseport listener to its sibling.

        Only ever in lbbench's own network namespace: without it a replaced nginx would reset
        connections that were waiting in its accept queue (net.ipv4.tcp_migrate_req, Linux 5.14+).
        """
        if in_private_netns():
            with contextlib.suppress(OSError):
                Path("/proc/sys/net/ipv4/tcp_migrate_req").write_text("1\n")

    async def stop(self) -> None:
        retiring, self._retiring = self._retiring, []
        await asyncio.gather(*(c.stop(2.0) for c in retiring if c.alive()))
        await super().stop()

    def pids(self) -> list[int]:
        return [*super().pids(), *(c.pid for c in self._retiring if c.alive())]

    def retired(self, old_workers: Sequence[int]) -> bool:
        """Old workers retitle themselves "is shutting down" as they close their listeners."""
        for pid in old_workers:
            try:
                title = " ".join(psutil.Process(pid).cmdline())
            except psutil.Error:
                continue  # gone
            if "shutting down" not in title:
                return False
        return True

    async def serving_generation(self) -> int | None:
        return await probe_generation(HostPort(self.plan.ingress_ip, self.plan.ingress_port))

    async def counters(self) -> dict[str, float]:
        out = await super().counters()
        out["single_process"] = float(self.single_process)
        return out

    def render(self) -> str:
        assert self.workdir is not None
        wd = self.workdir
        lines = [f"# lbbench nginx, generation {self.generation}: rendered from the run's plan", "daemon off;"]
        lines += self._process_lines()
        lines += [
            # reuseport clones one listener per worker; a single process polls only one of them
            "worker_processes 1;" if self.single_process else "worker_processes auto;",
            f"pid {wd}/nginx-{self.generation}.pid;" if self.single_process else f"pid {wd}/nginx.pid;",
            "error_log stderr warn;",
            "events { worker_connections 4096; }",
            "http {",
            "    access_log off;",
            *(f"    {t}_temp_path {wd}/tmp/{t};" for t in _TEMP_PATHS),
            *_indent(self._http_settings()),
        ]
        for s in self.plan.services:
            lines += _indent(self._upstream(s.key))
        rs = routes(self.plan)
        lines += _indent(self._default_server([r for r in rs if r.host is None]))
        for host in hosts_in_order(rs):
            if host is not None:
                lines += _indent(self._server(host, [r for r in rs if r.host == host]))
        lines += _indent(self._status_server())
        lines.append("}")
        return "\n".join(lines) + "\n"

    def _process_lines(self) -> list[str]:
        ident = unprivileged_identity()
        if ident is not None:
            return [f"user {ident[0]} {ident[1]};"]
        if self.single_process:
            return ["user root root;", "master_process off;"]
        return []

    def _http_settings(self) -> list[str]:
        p = self.plan.proxy
        c = ms(p.client_timeout_s)
        lines = [
            f"keepalive_timeout {c}ms;",
            "keepalive_requests 100000000;",
            f"client_header_timeout {c}ms;",
            f"client_body_timeout {c}ms;",
            f"send_timeout {c}ms;",
            "proxy_http_version 1.1;",
            'proxy_set_header Connection "";',
            "proxy_set_header Host $http_host;",
            "proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;",
            f"proxy_connect_timeout {ms(p.connect_timeout_s)}ms;",
            f"proxy_read_timeout {ms(p.server_timeout_s)}ms;",
            f"proxy_send_timeout {ms(p.server_timeout_s)}ms;",
        ]
        if p.retries > 0:
            lines += ["proxy_next_upstream error timeout;", f"proxy_next_upstream_tries {p.retries + 1};"]
        else:
            lines.append("proxy_next_upstream off;")
        return lines

    def _upstream(self, key: str) -> list[str]:
        eps = self.endpoints[key]
        if not eps:
            return []
        p = self.plan.proxy
        name = safe_name(key)
        opts = f" max_fails={p.eject_after} fail_timeout={math.ceil(eject_s(self.plan))}s"  # seconds only
        if p.maxconn > 0:
            opts = f" max_conns={p.maxconn}{opts}"
        balance = _BALANCE[p.balance]
        return [
            f"upstream {name} {{",
            f"    zone {name} 64k;",
            *([f"    {balance};"] if balance else []),
            *(f"    server {e.ip}:{e.port}{opts};" for e in eps),
            f"    keepalive {UPSTREAM_KEEPALIVE};",
            "    keepalive_requests 100000000;",
            "    keepalive_timeout 60s;",
            "}",
        ]

    def _locations(self, rs: list[Route]) -> list[str]:
        out: list[str] = []
        seen: set[str] = set()
        for r in rs:
            if r.path in seen:
                continue  # the more specific rule (sorted first) wins; nginx refuses duplicates
            seen.add(r.path)
            target = f"proxy_pass http://{safe_name(r.service)};" if self.endpoints[r.service] else "return 503;"
            out.append(f"    location {r.path} {{ {target} }}")
        if "/" not in seen:
            out.append("    location / { return 404; }")
        return out

    def _listen(self) -> str:
        return f"{self.plan.ingress_ip}:{self.plan.ingress_port}"

    def _default_listen(self) -> str:
        """The one `listen` that carries socket options (nginx wants them once per address)."""
        return f"{self._listen()} default_server{' reuseport' if self.single_process else ''}"

    def _default_server(self, rs: list[Route]) -> list[str]:
        return ["server {", f"    listen {self._default_listen()};", "    server_name _;",
                *self._locations(rs), "}"]

    def _server(self, host: str, rs: list[Route]) -> list[str]:
        return ["server {", f"    listen {self._listen()};", f"    server_name {host};", *self._locations(rs), "}"]

    def _status_server(self) -> list[str]:
        return ["server {", f"    listen {self._listen()};", "    server_name lbbench-status.invalid;",
                f'    location / {{ return 200 "lbbench-generation {self.generation}\\n"; }}', "}"]


def _indent(lines: list[str]) -> list[str]:
    return [f"    {ln}" for ln in lines]
