"""Shared machinery of the reference front ends (HAProxy, nginx, Apache httpd).

Each one is driven the way an operator drives it: render a config from the plan, check it
with the tool itself, run the binary in the foreground under lbbench's supervisor (so its
workers stay in the guarded process group: no orphans), and on every Endpoints update
rewrite the config and reload it (or use a runtime API), timing each update until the new
config is serving. Every rendered config is saved, numbered, into the run's artifacts.

"Serving" is observed, not assumed: each config carries a generation number that the
running proxy reports back (nginx and httpd through a name-based virtual host,
``Host: lbbench-status.invalid``, on the Ingress listener; HAProxy through ``show info``
on its stats socket), and an update counts as done when the new generation answers.

Everything lives in a private temporary directory (lbbench.system.scratch: 0700, files 0600,
swept at the next start when a SIGKILL left it behind); system configs, pid files and log
directories are never used. When lbbench runs as root, nginx and httpd workers switch to
``nobody`` as they would in production; inside an unprivileged user namespace (only uid 0
mapped, setgroups denied) that switch is impossible, which the per-proxy modules handle.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import json
import math
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import psutil

from lbbench.errors import UserError
from lbbench.frontends.base import Entrypoint, Frontend, FrontendPlan
from lbbench.model.addresses import HostPort, require_loopback
from lbbench.model.service import Endpoint, ServiceSpec, ServiceType
from lbbench.system import proctree
from lbbench.system.netns import find_tool
from lbbench.system.procs import Child, Supervisor, handles_signal
from lbbench.system.scratch import Kind, open_private, private_dir, write_private
from lbbench.system.users import unprivileged_identity

STATUS_HOST = "lbbench-status.invalid"  # .invalid never collides with a real Host header
STATUS_PATH = "/lbbench-generation"
READY_TIMEOUT_S = 15.0
_POLL_S = 0.002
_HOST_RE = re.compile(r"^(\*|[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?)$")
_PATH_RE = re.compile(r"^/[A-Za-z0-9._~!$&'()*+,=:@%/-]*$")
_GEN_RE = re.compile(rb"lbbench-generation (\d+)")


@dataclass(frozen=True)
class Route:
    """One Ingress route: Host (None = any) and path prefix -> Service key."""

    host: str | None
    path: str
    service: str


def routes(plan: FrontendPlan) -> tuple[Route, ...]:
    """The plan's routes, most specific first (named host before any host, longer prefix first).

    Without Ingress rules every Service is reachable by its cluster DNS name, and the first
    Service also takes requests whose Host matches nothing.
    """
    keys = {s.key for s in plan.services}
    if not plan.ingress_rules:
        out = [Route(s.dns_name, "/", s.key) for s in plan.services]
        if plan.services:
            out.append(Route(None, "/", plan.services[0].key))
        return tuple(out)
    out = []
    for r in plan.ingress_rules:
        if not _HOST_RE.match(r.host):
            raise UserError(f"ingress rule host {r.host!r} is not a host name or '*'")
        if not _PATH_RE.match(r.path):
            raise UserError(f"ingress rule path {r.path!r} must start with '/' and contain only URL path characters")
        if r.service not in keys:
            raise UserError(f"ingress rule {r.host}{r.path} names unknown Service {r.service!r}")
        out.append(Route(None if r.host == "*" else r.host.lower(), r.path, r.service))
    return tuple(sorted(out, key=lambda r: (r.host is None, -len(r.path))))


def hosts_in_order(rs: Sequence[Route]) -> list[str | None]:
    """Distinct hosts of `rs` in first-seen order (None = any host)."""
    seen: list[str | None] = []
    for r in rs:
        if r.host not in seen:
            seen.append(r.host)
    return seen


def safe_name(key: str) -> str:
    """A Service key as an identifier every config language accepts."""
    return "be_" + re.sub(r"[^A-Za-z0-9]", "_", key)


def l4_listeners(spec: ServiceSpec) -> list[HostPort]:
    """Every address kube-proxy would serve for a Service: ClusterIP, NodePorts, LB IP."""
    out = [HostPort(spec.cluster_ip, spec.port)]
    if spec.node_port is not None:
        out += [HostPort(ip, spec.node_port) for ip in spec.node_ips]
    if spec.lb_ip is not None:
        out.append(HostPort(spec.lb_ip, spec.port))
    for a in out:
        require_loopback(a.host, f"Service {spec.key} address")
    return list(dict.fromkeys(out))


def l7_entrypoint(plan: FrontendPlan, service_key: str) -> Entrypoint:
    addr = HostPort(plan.ingress_ip, plan.ingress_port)
    for r in routes(plan):
        if r.service == service_key:
            return Entrypoint(addr, r.host)
    raise UserError(f"no Ingress route leads to Service {service_key!r}")


def check_bindable(addrs: Sequence[HostPort], who: str) -> None:
    """Refuse privileged ports up front when not root, with the reason (the proxy's own error is cryptic)."""
    if os.geteuid() == 0:
        return
    try:
        first_free = int(Path("/proc/sys/net/ipv4/ip_unprivileged_port_start").read_text())
    except (OSError, ValueError):
        first_free = 1024
    low = [str(a) for a in addrs if 0 < a.port < first_free]
    if low:
        raise UserError(f"{who} must listen on {', '.join(low)}: ports below {first_free} need root "
                        "(run inside lbbench's private network namespace, or use Service ports >= "
                        f"{first_free})")


def eject_s(plan: FrontendPlan) -> float:
    """How long a passively ejected pod stays out: one active-check interval, at least 1 s.

    ProxySettings has no ejection time of its own; nginx `fail_timeout` and httpd `retry`
    need one, and this is roughly when an active check would have let the pod back in.
    """
    return max(1.0, plan.proxy.health.interval_s)


def ms(seconds: float) -> int:
    return max(1, math.ceil(seconds * 1000))


def binary_path(binary: str) -> str:
    """Absolute path of a proxy binary (they live in /usr/sbin, often not on a user's PATH)."""
    return find_tool(binary) or binary


def missing_binary_reason(binary: str, package: str) -> str | None:
    if find_tool(binary) is None:
        return f"{binary} not installed (apt-get install {package})"
    return None


async def probe_generation(addr: HostPort, timeout_s: float = 1.0) -> int | None:
    """Ask the status virtual host which config generation serves; None if no answer."""
    request = f"GET {STATUS_PATH} HTTP/1.1\r\nHost: {STATUS_HOST}\r\nConnection: close\r\n\r\n".encode()
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(addr.host, addr.port), timeout_s)
    except (OSError, TimeoutError):
        return None
    try:
        writer.write(request)
        data = await asyncio.wait_for(reader.read(65536), timeout_s)
    except (OSError, TimeoutError):
        return None
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    m = _GEN_RE.search(data)
    return int(m.group(1)) if m else None


async def wait_signal_handled(pid: int, sig: int, timeout_s: float = READY_TIMEOUT_S) -> None:
    """Until `pid` will act on `sig`: a signal sent earlier may be dropped (HAProxy's master)."""
    deadline = time.monotonic() + timeout_s
    while not handles_signal(pid, sig):
        if time.monotonic() > deadline:
            raise UserError(f"process {pid} did not get ready for signal {signal.Signals(sig).name} "
                            f"within {timeout_s:.0f} s")
        await asyncio.sleep(_POLL_S)


class ReferenceFrontend(Frontend):
    """Render -> write -> check -> run -> (update -> reload, timed) -> stop.

    Subclasses render the config, give the argv, and say how an update is applied and how
    the serving generation is observed.
    """

    binary: ClassVar[str]
    package: ClassVar[str]
    config_name: ClassVar[str]
    scratch: ClassVar[Kind]  # the name of its private temporary directory
    workers_switch_user: ClassVar[bool] = False  # as root, its workers run as nobody
    fatal_marker: ClassVar[bytes] = b"[emerg]"  # a log line that means "the new config was refused"

    def __init__(self, plan: FrontendPlan, supervisor: Supervisor) -> None:
        super().__init__(plan, supervisor)
        self.endpoints: dict[str, tuple[Endpoint, ...]] = {s.key: () for s in plan.services}
        self.generation = 0
        self.workdir: Path | None = None
        self.child: Child | None = None
        self._lock = asyncio.Lock()
        self._reload_s: list[float] = []
        self._stopped = False
        self._log_offset = 0
        require_loopback(plan.ingress_ip, "ingress address")

    @classmethod
    def unavailable_reason(cls) -> str | None:
        return missing_binary_reason(cls.binary, cls.package)

    # -- what a subclass provides -------------------------------------------------

    @abc.abstractmethod
    def render(self) -> str:
        """The whole config for the current endpoints and `self.generation`."""

    @abc.abstractmethod
    def run_argv(self, config: Path) -> list[str]:
        """Foreground command line that serves `config`."""

    @abc.abstractmethod
    def check_argv(self, config: Path) -> list[str]:
        """Command line that syntax-checks `config` and exits non-zero if it is wrong."""

    @abc.abstractmethod
    async def serving_generation(self) -> int | None:
        """The generation the running proxy reports, None if it does not answer (yet)."""

    async def apply_update(self, service_key: str) -> str:
        """Make the running proxy serve the freshly written config; returns how ("reload", ...)."""
        assert self.child is not None
        old = self.worker_pids()
        await wait_signal_handled(self.child.pid, self.reload_signal())
        self.child.signal(self.reload_signal())
        await self.wait_serving(old)
        return "reload"

    def listen_addresses(self) -> list[HostPort]:
        return [HostPort(self.plan.ingress_ip, self.plan.ingress_port)]

    def worker_pids(self) -> list[int]:
        """The master's current children (the workers of the generation now serving)."""
        if self.child is None:
            return []
        try:
            return [p.pid for p in psutil.Process(self.child.pid).children()]
        except psutil.Error:
            return []

    def retired(self, old_workers: Sequence[int]) -> bool:
        """Whether the workers of the previous generation stopped taking new connections."""
        return True

    def reload_signal(self) -> int:
        return signal.SIGHUP

    def prepare_workdir(self, workdir: Path) -> None:
        """Create whatever the config points at inside the private directory."""

    # -- the machinery ------------------------------------------------------------

    @property
    def config_path(self) -> Path:
        assert self.workdir is not None
        return self.workdir / self.config_name

    @property
    def log_path(self) -> Path:
        assert self.workdir is not None
        return self.workdir / "output.log"

    async def start(self) -> None:
        if self.child is not None:
            raise RuntimeError(f"{self.name} already started")
        if (why := self.unavailable_reason()) is not None:
            raise UserError(why)
        for eps in self.endpoints.values():
            self._check_endpoints(eps)
        check_bindable(self.listen_addresses(), self.name)
        # Workers that switched to nobody must traverse it (files inside stay private).
        self.workdir = private_dir(self.scratch, traversable=self.workers_switch_user
                                   and unprivileged_identity() is not None)
        self.prepare_workdir(self.workdir)
        self._write_config()
        await self.check_config(self.config_path)
        self.spawn()
        await self.wait_serving()

    def spawn(self) -> None:
        """Start the proxy on the current config file, its output appended to the log."""
        log = open_private(self.log_path)
        try:
            self.child = self.supervisor.spawn(self.name, self.run_argv(self.config_path), stdin=subprocess.DEVNULL,
                                               stdout=log, stderr=log, cwd=str(self.workdir))
        finally:
            os.close(log)

    async def update_endpoints(self, service_key: str, endpoints: tuple[Endpoint, ...]) -> None:
        if service_key not in self.endpoints:
            raise UserError(f"{self.name}: unknown Service {service_key!r}")
        self._check_endpoints(endpoints)
        async with self._lock:
            self.endpoints[service_key] = endpoints
            if self.child is None or self._stopped:
                return  # applied by start()
            self.assign(service_key)
            t0 = time.perf_counter()
            self._log_offset = self.log_path.stat().st_size
            self._write_config()
            how = await self.apply_update(service_key)
            took = time.perf_counter() - t0
            self._reload_s.append(took)
            self._log_update(service_key, len(endpoints), how, took)

    def assign(self, service_key: str) -> None:
        """Hook run before rendering an update (HAProxy assigns server slots here)."""

    async def wait_serving(self, old_workers: Sequence[int] = (), timeout_s: float = READY_TIMEOUT_S) -> None:
        """Return once the running proxy reports the current generation and the old workers retired."""
        deadline = time.monotonic() + timeout_s
        while True:
            self._raise_if_dead()
            self._raise_if_refused()
            if await self.serving_generation() == self.generation and self.retired(old_workers):
                return
            if time.monotonic() > deadline:
                raise UserError(f"{self.name} did not serve config generation {self.generation} within "
                                f"{timeout_s:.0f} s: {self.log_tail()}")
            await asyncio.sleep(_POLL_S)

    async def check_config(self, config: Path) -> None:
        """Syntax-check `config` with the proxy itself; UserError with its message if rejected."""
        out = config.with_suffix(config.suffix + ".check")
        f = open_private(out, append=False)
        try:
            child = self.supervisor.spawn(f"{self.name}-check", self.check_argv(config), stdin=subprocess.DEVNULL,
                                          stdout=f, stderr=f, cwd=str(config.parent))
        finally:
            os.close(f)
        try:
            rc = await asyncio.wait_for(child.wait(), READY_TIMEOUT_S)
        finally:
            child.stop_sync(0.5)
            with contextlib.suppress(ValueError):
                self.supervisor.children.remove(child)
        text = out.read_text(errors="replace").strip()
        out.unlink()
        if rc != 0:
            raise UserError(f"{self.binary} rejected {config}: {_last_line(text)}")

    async def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        child, self.child = self.child, None
        if child is not None:
            family = proctree.tree(child.pid)
            await child.stop(2.0)
            await asyncio.to_thread(proctree.reap, family)
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)

    async def counters(self) -> dict[str, float]:
        r = self._reload_s
        return {
            "reloads": float(len(r)),
            "reload_s_total": sum(r),
            "reload_s_max": max(r, default=0.0),
            "reload_s_last": r[-1] if r else 0.0,
        }

    def pids(self) -> list[int]:
        return [self.child.pid] if self.child is not None and self.child.alive() else []

    def entrypoint(self, service_key: str, via: ServiceType = "ClusterIP") -> Entrypoint:
        return l7_entrypoint(self.plan, service_key)

    def service(self, key: str) -> ServiceSpec:
        return next(s for s in self.plan.services if s.key == key)

    def log_tail(self, lines: int = 3) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except (OSError, AssertionError):
            return "(no output)"
        tail = [ln.strip() for ln in text.strip().splitlines()[-lines:]]
        return " | ".join(tail) or "(no output)"

    def _raise_if_dead(self) -> None:
        if self.child is None or not self.child.alive():
            rc = self.child.poll() if self.child is not None else None
            raise UserError(f"{self.name} exited (status {rc}): {self.log_tail()}")

    def _raise_if_refused(self) -> None:
        """A running proxy that keeps its old config after a bad reload says so in its log."""
        with self.log_path.open("rb") as f:
            f.seek(self._log_offset)
            new = f.read()
        if self.fatal_marker in new:
            line = next(ln for ln in new.splitlines() if self.fatal_marker in ln)
            raise UserError(f"{self.name} refused config generation {self.generation}: "
                            f"{line.decode(errors='replace').strip()}")

    def _check_endpoints(self, endpoints: tuple[Endpoint, ...]) -> None:
        for e in endpoints:
            require_loopback(e.ip, f"endpoint {e.pod}")
            if not 0 < e.port < 65536:
                raise UserError(f"endpoint {e.pod} has port {e.port}, expected 1-65535")

    def _write_config(self) -> None:
        self.generation += 1
        text = self.render()
        tmp = self.config_path.with_suffix(".tmp")
        write_private(tmp, text)
        tmp.replace(self.config_path)  # a reload never reads a half-written file
        if self.plan.artifacts_dir is not None:
            self.plan.artifacts_dir.mkdir(parents=True, exist_ok=True)
            self._artifact(self.config_name).write_text(text)

    def _artifact(self, suffix: str) -> Path:
        """Next free numbered file in the artifacts dir (several phases share the folder)."""
        assert self.plan.artifacts_dir is not None
        n = 1 + max((int(p.name.split("-", 1)[0]) for p in self.plan.artifacts_dir.glob(f"[0-9]*-{suffix}")),
                    default=0)
        return self.plan.artifacts_dir / f"{n:04d}-{suffix}"

    def _log_update(self, service_key: str, n: int, how: str, took: float) -> None:
        if self.plan.artifacts_dir is None:
            return
        line = {"at": time.time(), "frontend": self.name, "generation": self.generation, "service": service_key,
                "endpoints": n, "method": how, "seconds": round(took, 6)}
        with (self.plan.artifacts_dir / "updates.jsonl").open("a") as f:
            f.write(json.dumps(line) + "\n")


def _last_line(text: str) -> str:
    """The line that says why: the last alert, skipping HAProxy's closing summaries ("Error(s) found...")."""
    lines = [ln for ln in text.splitlines() if ln.strip() and "syntax is ok" not in ln]
    alerts = [ln for ln in lines if re.search(r"ALERT|emerg|rror", ln)]
    reasons = [ln for ln in alerts if not re.search(r"Fatal errors found|Error\(s\) found in configuration", ln)]
    return (reasons or alerts or lines or ["(no output)"])[-1].strip()

