"""HAProxy as a reference front end: `haproxy` (mode http, the Ingress) and `haproxy-tcp`.

Both run in master-worker mode in the foreground (``haproxy -W -db -f cfg``) so the pid
lbbench holds stays the master across reloads, and every worker is its child.

Endpoints updates use the runtime API, as HAProxy ingress controllers do: each backend has
pre-allocated server slots (``sN``); a new pod takes a free slot (``set server be/sN addr IP
port P`` + ``state ready``), a removed pod's slot goes to ``state maint``. Slots are stable
(a pod keeps its slot), and a slot freed by this very update is reused last, so requests
still in flight on a removed pod are not mixed with a new pod's. Only when a backend runs
out of slots is the config re-rendered with twice as many and the master reloaded
(SIGUSR2: a new worker takes over the listeners, the old one finishes its requests and
leaves, bounded by ``hard-stop-after``). The config on disk always matches the runtime
state, so a reload never loses an update. Counters: ``reloads`` counts every update,
``process_reloads`` the ones that needed a new worker.

ProxySettings -> `haproxy` (mode http):
  maxconn            ``maxconn`` per server (0: no limit); beyond it requests wait in the
                     backend queue, inside HAProxy.
  queue_timeout_s    ``timeout queue`` (503 when exceeded).
  max_queue          no equivalent: the backend queue is bounded only by the global
                     ``maxconn`` (``maxqueue`` is per server and only for persistent traffic).
  balance            round-robin: ``roundrobin``; random: ``random(1)``; least-conn:
                     ``leastconn``; p2c: ``random(2)``; peak-ewma: no latency-aware
                     algorithm exists, ``leastconn`` is the closest.
  retries            ``retries`` + ``option redispatch`` (the retry goes to another server).
  retry_idempotent   ``retry-on conn-failure empty-response`` with
                     ``http-request disable-l7-retry unless METH_GET`` (GET/HEAD only);
                     otherwise ``retry-on conn-failure``.
  eject_after        no passive ejection in HAProxy 2.6 (``observe layer7`` +
                     ``error-limit`` only marks a server down through its checks); the
                     active checks below do the ejecting.
  health             ``option httpchk GET <path>``, ``check inter fall rise``, ``timeout check``.
  timeouts           ``timeout connect|server|client|http-keep-alive``.
An empty Endpoints list leaves every slot in maintenance: HAProxy answers 503 at once (no
server is usable, so nothing is queued). ``timeout queue`` applies only while some server
is usable but full. ``option forwardfor`` adds X-Forwarded-For like lbbench's proxy.

`haproxy-tcp` is the like-for-like reference for the L4 forwarder: ``mode tcp`` on every
Service address (ClusterIP:port, each node's NodePort, the LoadBalancer IP), ``balance
random(1)`` (uniform, as kube-proxy), ``retries 0``, no health checks, no ``maxconn``, no
queue. With no endpoints the connection is rejected at accept. Unlike kernel DNAT, the
client's connection is accepted first, so a dead pod shows as a closed connection rather
than a refused one.

``show stat`` on the stats socket gives ``queue_len`` (backend + server queues) and
``in_flight_total`` (current sessions on servers) in `counters()`.

Health verdicts: `haproxy` sends its backends' log, at level notice and above, in raw format to a
datagram socket in its private directory (the frontend has no ``log``, so no request is
logged); a line ``Server be/sN is DOWN, reason: ...`` (or ``UP``) becomes a `BackendHealth` for the
pod in slot N, stamped when it arrives. Maintenance on and off (Endpoints updates) is not a verdict.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import re
import signal
import socket
import time
from pathlib import Path
from typing import ClassVar, Literal

from lbbench.errors import UserError
from lbbench.frontends.base import BackendHealth, Entrypoint, FrontendPlan
from lbbench.frontends.dnat.plan import entrypoint_of
from lbbench.frontends.reference.common import (
    ReferenceFrontend,
    Route,
    binary_path,
    hosts_in_order,
    l4_listeners,
    ms,
    routes,
    safe_name,
    wait_signal_handled,
)
from lbbench.model.addresses import HostPort
from lbbench.model.service import Endpoint, ServiceType
from lbbench.system.procs import Supervisor
from lbbench.system.scratch import Kind

MIN_SLOTS = 8
GLOBAL_MAXCONN = 8192
HAPROXY_SOCKET_PATH_MAX = 97  # HAProxy refuses a longer unix socket path (sun_path less its own suffix)
_CLI_ERRORS = ("No such", "Unknown command", "Permission denied", "Require ", "'set server", "Invalid")
_BALANCE = {"round-robin": "roundrobin", "random": "random(1)", "least-conn": "leastconn", "p2c": "random(2)",
            "peak-ewma": "leastconn"}
_COUNTER_COLUMNS = {"wretr": "retries", "wredis": "redispatches", "econ": "connect_errors", "eresp": "response_errors",
                    "hrsp_5xx": "http_5xx"}

_VERDICT = re.compile(rb"Server (\S+)/s(\d+) is (DOWN|UP), reason: ([^,.]*)")

Slot = Endpoint | None


def in_config(socket_path: Path) -> str:
    """A unix socket in the workdir as the config names it: relative to the workdir (HAProxy's cwd)
    when the absolute path is longer than HAProxy accepts, as it is under a deep TMPDIR."""
    path = str(socket_path)
    return path if len(path) <= HAPROXY_SOCKET_PATH_MAX else f"unix@{socket_path.name}"


class _Haproxy(ReferenceFrontend):
    binary: ClassVar[str] = "haproxy"
    package: ClassVar[str] = "haproxy"
    config_name: ClassVar[str] = "haproxy.cfg"
    scratch: ClassVar[Kind] = "haproxy"
    mode: ClassVar[Literal["http", "tcp"]]

    def __init__(self, plan: FrontendPlan, supervisor: Supervisor) -> None:
        super().__init__(plan, supervisor)
        self.slots: dict[str, list[Slot]] = {s.key: [None] * MIN_SLOTS for s in plan.services}
        self._changed: dict[str, list[int]] = {}
        self._grew = False
        self.process_reloads = 0

    @property
    def socket_path(self) -> Path:
        assert self.workdir is not None
        return self.workdir / "stats.sock"

    def run_argv(self, config: Path) -> list[str]:
        return [binary_path(self.binary), "-W", "-db", "-f", str(config)]

    def check_argv(self, config: Path) -> list[str]:
        return [binary_path(self.binary), "-c", "-f", str(config)]

    # -- slots ----------------------------------------------------------------------

    def assign(self, service_key: str) -> None:
        """Give new pods free slots, free the slots of removed pods; note what changed."""
        slots = self.slots[service_key]
        want = self.endpoints[service_key]
        long_free = [i for i, e in enumerate(slots) if e is None]
        just_freed = [i for i, e in enumerate(slots) if e is not None and e not in want]
        for i in just_freed:
            slots[i] = None
        placed = {e for e in slots if e is not None}
        new = [e for e in want if e not in placed]
        free = long_free + just_freed
        if len(new) > len(free):
            size = len(slots)
            while size - len(placed) < len(new):
                size *= 2
            free += range(len(slots), size)
            slots.extend([None] * (size - len(slots)))
            self._grew = True
        for e, i in zip(new, free, strict=False):
            slots[i] = e
        self._changed[service_key] = sorted(set(just_freed) | set(free[: len(new)]))

    def _assign_initial(self) -> None:
        for key in self.slots:
            self.assign(key)
        self._grew = False
        self._changed.clear()

    async def start(self) -> None:
        self._assign_initial()
        await super().start()

    async def apply_update(self, service_key: str) -> str:
        if self._grew:
            self._grew = False
            self._changed.pop(service_key, None)  # the new worker reads every slot from the config
            await self._reload_process()
            return "reload"
        be = safe_name(service_key)
        commands: list[str] = []
        for i in self._changed.pop(service_key, []):
            e = self.slots[service_key][i]
            if e is None:
                commands.append(f"set server {be}/s{i + 1} state maint")
            else:
                commands += [f"set server {be}/s{i + 1} addr {e.ip} port {e.port}",
                             f"set server {be}/s{i + 1} state ready"]
        if commands:
            await self.cli("; ".join(commands))
        return "runtime-api"

    async def _reload_process(self) -> None:
        assert self.child is not None
        # The master (re-executed by each reload) ignores SIGUSR2 until its worker is up.
        await wait_signal_handled(self.child.pid, signal.SIGUSR2)
        self.child.signal(signal.SIGUSR2)
        await self.wait_serving()
        self.process_reloads += 1

    # -- runtime API ----------------------------------------------------------------

    async def cli(self, command: str, timeout_s: float = 2.0) -> str:
        """One command line on the stats socket; raises on an error answer."""
        reader, writer = await asyncio.wait_for(asyncio.open_unix_connection(str(self.socket_path)), timeout_s)
        try:
            writer.write(command.encode() + b"\n")
            answer = (await asyncio.wait_for(reader.read(), timeout_s)).decode(errors="replace")
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
        bad = [ln for ln in answer.splitlines() if ln.startswith(_CLI_ERRORS)]
        if bad:
            raise RuntimeError(f"haproxy runtime API refused {command!r}: {bad[0]}")
        return answer

    async def serving_generation(self) -> int | None:
        try:
            info = await self.cli("show info", timeout_s=1.0)
        except (OSError, TimeoutError, RuntimeError):
            return None
        for line in info.splitlines():
            if line.startswith("description: lbbench-generation "):
                return int(line.rsplit(" ", 1)[1])
        return None

    async def counters(self) -> dict[str, float]:
        out = await super().counters()
        out["process_reloads"] = float(self.process_reloads)
        if self.child is None:
            return out
        try:
            rows = list(csv.DictReader(io.StringIO((await self.cli("show stat", 1.0)).lstrip("# "))))
        except (OSError, TimeoutError, RuntimeError):
            return out
        servers = [r for r in rows if r.get("type") == "2"]
        backends = [r for r in rows if r.get("type") == "1" and r.get("pxname", "").startswith("be_")]
        out["queue_len"] = float(sum(_int(r, "qcur") for r in servers + backends))
        out["in_flight_total"] = float(sum(_int(r, "scur") for r in servers))
        for column, name in _COUNTER_COLUMNS.items():
            out[name] = float(sum(_int(r, column) for r in backends))
        return out

    # -- rendering ------------------------------------------------------------------

    def render_global(self) -> list[str]:
        p = self.plan.proxy
        hard_stop = ms(p.server_timeout_s + p.queue_timeout_s)
        return [
            f"# lbbench {self.name}, generation {self.generation}: rendered from the run's plan",
            "global",
            f"    description lbbench-generation {self.generation}",
            f"    stats socket {in_config(self.socket_path)} mode 600 level admin expose-fd listeners",
            "    stats timeout 10s",
            f"    hard-stop-after {hard_stop}ms",
            f"    maxconn {GLOBAL_MAXCONN}",
            "",
        ]

    def render_servers(self, key: str, options: str) -> list[str]:
        """One line per slot; empty slots wait in maintenance at a placeholder address."""
        port = self.service(key).target_port
        lines = []
        for i, e in enumerate(self.slots[key], 1):
            if e is None:
                lines.append(f"    server s{i} 127.0.0.1:{port}{options} disabled")
            else:
                lines.append(f"    server s{i} {e.ip}:{e.port}{options}")
        return lines


class HaproxyHttp(_Haproxy):
    """HAProxy in mode http: the Ingress, with a real request queue."""

    name: ClassVar[str] = "haproxy"
    layer: ClassVar[Literal["l4", "l7"]] = "l7"
    mode: ClassVar[Literal["http", "tcp"]] = "http"

    def __init__(self, plan: FrontendPlan, supervisor: Supervisor) -> None:
        super().__init__(plan, supervisor)
        self._verdicts: socket.socket | None = None

    @property
    def verdicts_path(self) -> Path:
        assert self.workdir is not None
        return self.workdir / "health.sock"

    def spawn(self) -> None:
        """Listen for the checks' verdicts, then start HAProxy, which will log them there."""
        if self._verdicts is None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            sock.bind(str(self.verdicts_path))
            sock.setblocking(False)
            asyncio.get_running_loop().add_reader(sock.fileno(), self._read_verdicts)
            self._verdicts = sock
        super().spawn()

    def _read_verdicts(self) -> None:
        assert self._verdicts is not None
        now = time.monotonic()  # the moment HAProxy said it (a datagram arrives at once)
        while True:
            try:
                line = self._verdicts.recv(4096)
            except OSError:  # drained (BlockingIOError), or closed
                return
            if (m := _VERDICT.search(line)) is not None:
                self._verdict(now, m)

    def _verdict(self, now: float, m: re.Match[bytes]) -> None:
        backend, slot, state, reason = (g.decode(errors="replace") for g in m.groups())
        key = next((k for k in self.slots if safe_name(k) == backend), None)
        slots = self.slots.get(key or "", [])
        e = slots[int(slot) - 1] if 0 < int(slot) <= len(slots) else None
        if e is not None:
            self.report_health(BackendHealth(now, "down" if state == "DOWN" else "up", e.pod,
                                             f"{reason}; {e.ip}:{e.port}"))

    async def stop(self) -> None:
        await super().stop()
        if self._verdicts is not None:
            asyncio.get_running_loop().remove_reader(self._verdicts.fileno())
            self._verdicts.close()
            self._verdicts = None

    def render_global(self) -> list[str]:
        # notice and above: the checks' verdicts and the backends' alerts, never a request
        return [*super().render_global()[:-1], f"    log {in_config(self.verdicts_path)} format raw local0 notice", ""]

    def render(self) -> str:
        p = self.plan.proxy
        lines = self.render_global()
        lines += [
            "defaults",
            "    mode http",
            f"    timeout connect {ms(p.connect_timeout_s)}ms",
            f"    timeout client {ms(p.client_timeout_s)}ms",
            f"    timeout http-keep-alive {ms(p.client_timeout_s)}ms",
            f"    timeout server {ms(p.server_timeout_s)}ms",
            f"    timeout queue {ms(p.queue_timeout_s)}ms",
            f"    timeout check {ms(p.health.timeout_s)}ms",
            f"    retries {p.retries}",
            "    option forwardfor",
        ]
        if p.retries > 0:
            lines.append("    option redispatch")
            retry_on = "conn-failure empty-response" if p.retry_idempotent else "conn-failure"
            lines.append(f"    retry-on {retry_on}")
        lines += ["", *self._render_frontend(routes(self.plan)), ""]
        lines += [
            "backend lbbench_no_route",
            '    http-request return status 404 content-type text/plain string "no Ingress route for this request"',
            "",
        ]
        for s in self.plan.services:
            lines += [*self._render_backend(s.key), ""]
        return "\n".join(lines)

    def _render_frontend(self, rs: tuple[Route, ...]) -> list[str]:
        lines = [
            "frontend ingress",
            f"    bind {self.plan.ingress_ip}:{self.plan.ingress_port}",
            "    http-request set-var(txn.host) req.hdr(host),field(1,:),lower",
        ]
        for host in hosts_in_order(rs):
            on_host = "" if host is None else f"{{ var(txn.host) -m str {host} }} "
            for r in rs:
                if r.host == host:
                    lines.append(f"    use_backend {safe_name(r.service)} if {on_host}{{ path_beg {r.path} }}")
            if host is not None:  # a known host whose paths all missed: 404, as nginx and httpd do
                lines.append(f"    use_backend lbbench_no_route if {on_host.strip()}")
        lines.append("    default_backend lbbench_no_route")
        return lines

    def _render_backend(self, key: str) -> list[str]:
        p = self.plan.proxy
        h = p.health
        lines = [
            f"backend {safe_name(key)}",
            f"    balance {_BALANCE[p.balance]}",
            f"    option httpchk GET {h.path}",
            "    log global",
        ]
        if p.retries > 0 and p.retry_idempotent:
            lines.append("    http-request disable-l7-retry unless METH_GET")
        server_opts = f" check inter {ms(h.interval_s)} fall {h.fall} rise {h.rise}"
        if p.maxconn > 0:
            server_opts += f" maxconn {p.maxconn}"
        return lines + self.render_servers(key, server_opts)


class HaproxyTcp(_Haproxy):
    """HAProxy in mode tcp on the Services' own addresses: kube-proxy's job, done in userspace."""

    name: ClassVar[str] = "haproxy-tcp"
    layer: ClassVar[Literal["l4", "l7"]] = "l4"
    mode: ClassVar[Literal["http", "tcp"]] = "tcp"

    def __init__(self, plan: FrontendPlan, supervisor: Supervisor) -> None:
        super().__init__(plan, supervisor)
        for s in plan.services:
            l4_listeners(s)  # validates: loopback only

    def render(self) -> str:
        p = self.plan.proxy
        lines = self.render_global()
        lines += [
            "defaults",
            "    mode tcp",
            f"    timeout connect {ms(p.connect_timeout_s)}ms",
            f"    timeout client {ms(p.client_timeout_s)}ms",
            f"    timeout server {ms(p.server_timeout_s)}ms",
            "    retries 0",
            "",
        ]
        for s in self.plan.services:
            be = safe_name(s.key)
            lines.append(f"frontend fe_{be[3:]}")
            lines += [f"    bind {a}" for a in l4_listeners(s)]
            lines += [f"    tcp-request connection reject if {{ nbsrv({be}) eq 0 }}", f"    default_backend {be}", ""]
            lines += [f"backend {be}", "    balance random(1)", *self.render_servers(s.key, ""), ""]
        return "\n".join(lines)

    async def start(self) -> None:
        if not self.plan.services:
            raise UserError("haproxy-tcp needs at least one Service to listen for")
        await super().start()

    def entrypoint(self, service_key: str, via: ServiceType = "ClusterIP") -> Entrypoint:
        return entrypoint_of(self.service(service_key), via)

    def listen_addresses(self) -> list[HostPort]:
        return [a for s in self.plan.services for a in l4_listeners(s)]


def _int(row: dict[str, str], column: str) -> int:
    try:
        return int(row.get(column) or 0)
    except ValueError:
        return 0
