"""userspace-dnat: kube-proxy's random DNAT, done by an L4 forwarder process.

Per *new connection* the forwarder picks one endpoint of the Service uniformly at random
(seeded; ``--mode rr`` for IPVS-style round robin) from its last-synced table, connects to
it and splices the two TCP connections. No queue, no retry, no health checks: like the
kernel rules it imitates, it knows only what the last Endpoints sync told it.

- empty table: the client is reset at once (kube-proxy's REJECT);
- connect failure to the chosen pod: the client is reset at once (the kernel would pass the
  dead pod's RST straight back);
- removing an endpoint leaves established connections on it (conntrack keeps them).

It runs as its own process (``lbbench serve dnat``) so its CPU is measured apart from the
generator's and the pods'. The parent talks to it over the control pipe (JSON lines on
stdin, replies as JSON lines on stdout): ``{"id": n, "endpoints": {...}}`` and
``{"id": n, "stats": true}``; the first stdout line is ``{"ready": [addresses]}``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import os
import random
import socket
import struct
import subprocess
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, cast

from lbbench.frontends.base import Endpoint, Entrypoint, Frontend, FrontendPlan, ServiceSpec, ServiceType
from lbbench.netaddr import HostPort, parse_hostport, require_loopback
from lbbench.procs import Child, Supervisor, lbbench_argv

Mode = Literal["random", "rr"]
PENDING_MAX = 64 * 1024  # client bytes held while the pod connection is being set up
_LINGER_RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends RST


# ---------------------------------------------------------------------------------------
# Service types -> addresses (shared with kernel-nftables)


def validate_service(spec: ServiceSpec) -> None:
    """Raise ValueError unless every address of `spec` is loopback and its type is complete."""
    require_loopback(spec.cluster_ip, f"service {spec.key} cluster_ip")
    for port, what in ((spec.port, "port"), (spec.target_port, "target_port")):
        if not 1 <= port <= 65535:
            raise ValueError(f"service {spec.key}: {what} {port} out of range 1-65535")
    if spec.type in ("NodePort", "LoadBalancer"):
        if spec.node_port is None or not 1 <= spec.node_port <= 65535:
            raise ValueError(f"service {spec.key} is {spec.type} but has no valid node_port")
        if not spec.node_ips:
            raise ValueError(f"service {spec.key} is {spec.type} but has no node_ips")
        for ip in spec.node_ips:
            require_loopback(ip, f"service {spec.key} node IP")
    if spec.type == "LoadBalancer":
        if spec.lb_ip is None:
            raise ValueError(f"service {spec.key} is LoadBalancer but has no lb_ip")
        require_loopback(spec.lb_ip, f"service {spec.key} lb_ip")


def node_port_addrs(spec: ServiceSpec) -> tuple[HostPort, ...]:
    """Every node's IP at the Service's NodePort (empty for ClusterIP)."""
    if spec.type == "ClusterIP" or spec.node_port is None:
        return ()
    return tuple(HostPort(ip, spec.node_port) for ip in spec.node_ips)


def entrypoint_of(spec: ServiceSpec, via: ServiceType) -> Entrypoint:
    """ClusterIP:port, the first node's IP:NodePort, or the LoadBalancer IP:port."""
    if via == "ClusterIP":
        return Entrypoint(HostPort(spec.cluster_ip, spec.port))
    if via == "NodePort":
        nodes = node_port_addrs(spec)
        if not nodes:
            raise ValueError(f"service {spec.key} is {spec.type}: it has no NodePort")
        return Entrypoint(nodes[0])
    if spec.type != "LoadBalancer" or spec.lb_ip is None:
        raise ValueError(f"service {spec.key} is {spec.type}: it has no LoadBalancer address")
    return Entrypoint(HostPort(spec.lb_ip, spec.port))


def lb_table(spec: ServiceSpec) -> str:
    return f"lb:{spec.key}"


# ---------------------------------------------------------------------------------------
# The forwarder's plan (what to listen on, which table each listener uses)


@dataclass(frozen=True)
class Listener:
    addr: HostPort
    table: str  # a Service key, or lb_table(spec) for a LoadBalancer's hop to the nodes


@dataclass(frozen=True)
class ForwarderPlan:
    listeners: tuple[Listener, ...]
    tables: tuple[tuple[str, tuple[HostPort, ...]], ...]  # table -> initial backends
    mode: Mode = "random"
    seed: int = 0

    def to_json(self) -> str:
        return json.dumps({
            "mode": self.mode, "seed": self.seed,
            "listeners": [{"addr": str(lst.addr), "table": lst.table} for lst in self.listeners],
            "tables": {name: [str(b) for b in backends] for name, backends in self.tables},
        })

    @classmethod
    def from_json(cls, text: str) -> ForwarderPlan:
        raw = json.loads(text)
        mode = raw.get("mode", "random")
        if mode not in ("random", "rr"):
            raise ValueError(f"mode must be 'random' or 'rr', got {mode!r}")
        listeners = tuple(Listener(parse_hostport(x["addr"]), str(x["table"])) for x in raw["listeners"])
        tables = tuple((str(k), tuple(parse_hostport(b) for b in v)) for k, v in raw["tables"].items())
        plan = cls(listeners, tables, cast(Mode, mode), int(raw.get("seed", 0)))
        plan.check()
        return plan

    def check(self) -> None:
        names = {name for name, _ in self.tables}
        for lst in self.listeners:
            if lst.table not in names:
                raise ValueError(f"listener {lst.addr} uses unknown table {lst.table!r}")
        addrs = [lst.addr for lst in self.listeners]
        if len(set(addrs)) != len(addrs):
            raise ValueError("two listeners on the same address")


def forwarder_plan(services: Sequence[ServiceSpec], mode: Mode, seed: int, *,
                   include_cluster: bool = True) -> ForwarderPlan:
    """Listeners for every Service type: ClusterIP, each node's NodePort, the LB hop.

    The LoadBalancer listener stands for the cloud balancer: it spreads connections over the
    node IP:NodePort pairs (a static table), where the NodePort listeners DNAT again.
    With include_cluster=False only the LoadBalancer hops are planned (kernel-nftables does
    ClusterIP and NodePort in the kernel).
    """
    listeners: list[Listener] = []
    tables: list[tuple[str, tuple[HostPort, ...]]] = []
    for spec in services:
        validate_service(spec)
        if include_cluster:
            tables.append((spec.key, ()))
            listeners.append(Listener(HostPort(spec.cluster_ip, spec.port), spec.key))
            listeners.extend(Listener(addr, spec.key) for addr in node_port_addrs(spec))
        if spec.type == "LoadBalancer" and spec.lb_ip is not None:
            tables.append((lb_table(spec), node_port_addrs(spec)))
            listeners.append(Listener(HostPort(spec.lb_ip, spec.port), lb_table(spec)))
    plan = ForwarderPlan(tuple(listeners), tuple(tables), mode, seed)
    plan.check()
    return plan


# ---------------------------------------------------------------------------------------
# The forwarder (runs in the child process)


class Counters:
    __slots__ = ("accepted", "active", "bytes_down", "bytes_up", "connect_failures", "rejected", "updates")

    def __init__(self) -> None:
        self.accepted = self.active = self.rejected = self.connect_failures = 0
        self.bytes_up = self.bytes_down = self.updates = 0

    def snapshot(self) -> dict[str, float]:
        return {
            "connections_total": self.accepted,
            "connections_active": self.active,
            "rejected_no_endpoints_total": self.rejected,
            "connect_failures_total": self.connect_failures,
            "bytes_client_to_pod_total": self.bytes_up,
            "bytes_pod_to_client_total": self.bytes_down,
            "endpoint_updates_total": self.updates,
        }


class Table:
    """One Service's last-synced endpoints."""

    __slots__ = ("backends", "next_rr")

    def __init__(self, backends: Sequence[HostPort] = ()) -> None:
        self.backends = tuple(backends)
        self.next_rr = 0


def _reset(transport: asyncio.Transport) -> None:
    """Close with RST (what the kernel's REJECT / a dead pod gives the client)."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
    transport.abort()


class _Side(asyncio.Protocol):
    """One TCP connection of a spliced pair; `peer` is the other one (None while connecting)."""

    transport: asyncio.Transport
    peer: _Side | None

    def __init__(self) -> None:
        self.peer = None
        self.got_eof = False  # our socket has sent us FIN
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    # Flow control: when our outgoing buffer is full, stop reading the peer that feeds it.
    def pause_writing(self) -> None:
        peer = self.peer
        if peer is not None and not peer.transport.is_closing():
            peer.transport.pause_reading()

    def resume_writing(self) -> None:
        peer = self.peer
        if peer is not None and not peer.transport.is_closing():
            peer.transport.resume_reading()

    def eof_received(self) -> bool:
        self.got_eof = True
        if self.peer is not None:
            self.forward_eof(self.peer)
        return True  # stay open: the other direction may still be flowing (half-close)

    def forward_eof(self, peer: _Side) -> None:
        if peer.transport.is_closing():
            return
        peer.transport.write_eof()  # sent once the buffered bytes are flushed
        if peer.got_eof:  # both directions done
            peer.transport.close()
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        peer = self.peer
        if peer is None or peer.lost:
            return
        if exc is None:
            peer.transport.close()  # flush what is buffered, then FIN
        else:
            _reset(peer.transport)  # an RST travels through, as it would through conntrack


class _ClientSide(_Side):
    """An accepted client connection: pick a pod, connect, then relay."""

    def __init__(self, fwd: Forwarder, table: Table) -> None:
        super().__init__()
        self.fwd = fwd
        self.table = table
        self.pending: bytearray | None = None
        self.paused_pending = False
        self.connecting: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        counters = self.fwd.counters
        counters.accepted += 1
        counters.active += 1
        backend = self.fwd.pick(self.table)
        if backend is None:
            counters.rejected += 1
            _reset(self.transport)
            return
        self.pending = bytearray()
        self.connecting = asyncio.get_running_loop().create_task(self._connect(backend))

    async def _connect(self, backend: HostPort) -> None:
        loop = asyncio.get_running_loop()
        try:
            await loop.create_connection(lambda: _PodSide(self), backend.host, backend.port)
        except OSError:
            self.fwd.counters.connect_failures += 1
            if not self.lost:
                _reset(self.transport)
        finally:
            self.connecting = None

    def data_received(self, data: bytes) -> None:
        peer = self.peer
        if peer is not None:
            try:
                peer.transport.write(data)
            except RuntimeError:  # the pod's socket closed this very iteration; its reset follows
                return
            self.fwd.counters.bytes_up += len(data)
            return
        pending = self.pending
        if pending is None:
            return  # rejected; the reset is on its way
        pending += data
        if len(pending) > PENDING_MAX and not self.paused_pending:
            self.paused_pending = True
            self.transport.pause_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.fwd.counters.active -= 1
        if self.connecting is not None:
            self.connecting.cancel()
        super().connection_lost(exc)


class _PodSide(_Side):
    """The forwarder's connection to the chosen pod."""

    def __init__(self, client: _ClientSide) -> None:
        super().__init__()
        self.client = client

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        client = self.client
        if client.lost:
            transport.close()
            return
        self.peer = client
        client.peer = self
        # Resume first: flushing the pending bytes may pause the client again, and must win.
        if client.paused_pending:
            client.paused_pending = False
            client.transport.resume_reading()
        pending, client.pending = client.pending, None
        if pending:
            self.transport.write(bytes(pending))
            client.fwd.counters.bytes_up += len(pending)
        if client.got_eof:
            client.forward_eof(self)

    def data_received(self, data: bytes) -> None:
        try:
            self.client.transport.write(data)
        except RuntimeError:  # the client's socket closed this very iteration; its reset follows
            return
        self.client.fwd.counters.bytes_down += len(data)


class Forwarder:
    """All listeners of one forwarder process and their endpoint tables."""

    def __init__(self, plan: ForwarderPlan) -> None:
        self.plan = plan
        self.tables = {name: Table(backends) for name, backends in plan.tables}
        self.rng = random.Random(plan.seed)
        self.round_robin = plan.mode == "rr"
        self.counters = Counters()
        self.servers: list[asyncio.Server] = []

    def pick(self, table: Table) -> HostPort | None:
        backends = table.backends
        if not backends:
            return None
        if self.round_robin:
            i = table.next_rr % len(backends)
            table.next_rr = i + 1
            return backends[i]
        return backends[self.rng.randrange(len(backends))]

    def set_endpoints(self, table: str, backends: Iterable[HostPort]) -> None:
        if table not in self.tables:
            raise ValueError(f"unknown service {table!r}")
        self.tables[table].backends = tuple(backends)
        self.counters.updates += 1

    async def start(self) -> list[HostPort]:
        loop = asyncio.get_running_loop()
        bound: list[HostPort] = []
        for lst in self.plan.listeners:
            table = self.tables[lst.table]
            server = await loop.create_server(
                functools.partial(_ClientSide, self, table),
                lst.addr.host, lst.addr.port, reuse_address=True, backlog=4096,
            )
            self.servers.append(server)
            host, port = server.sockets[0].getsockname()[:2]
            bound.append(HostPort(host, port))
        return bound

    def close(self) -> None:
        for server in self.servers:
            server.close()


def endpoints_message(service_key: str, endpoints: Sequence[Endpoint]) -> dict[str, Any]:
    return {"service": service_key,
            "endpoints": [{"pod": e.pod, "ip": e.ip, "port": e.port, "node": e.node} for e in endpoints]}


def _parse_endpoints(body: Mapping[str, Any]) -> tuple[str, list[HostPort]]:
    backends = [HostPort(require_loopback(str(e["ip"]), "endpoint IP"), int(e["port"]))
                for e in body["endpoints"]]
    return str(body["service"]), backends


def _reply(message: dict[str, Any]) -> None:
    sys.stdout.buffer.write(json.dumps(message, separators=(",", ":")).encode() + b"\n")
    sys.stdout.buffer.flush()


async def serve_forwarder(plan: ForwarderPlan) -> None:
    """Child main: listen, answer control messages, exit on SIGTERM/SIGINT or stdin EOF."""
    import signal

    from lbbench.control import Message, attach_stdin_control

    loop = asyncio.get_running_loop()
    fwd = Forwarder(plan)

    def on_message(msg: Message) -> None:
        reply: dict[str, Any] = {"id": msg.get("id")}
        try:
            if isinstance(msg.get("endpoints"), dict):
                fwd.set_endpoints(*_parse_endpoints(msg["endpoints"]))
                reply["ok"] = True
            elif msg.get("stats"):
                reply["counters"] = fwd.counters.snapshot()
        except (ValueError, KeyError, TypeError) as e:
            reply["error"] = str(e)
        _reply(reply)

    bound = await fwd.start()
    attach_stdin_control(loop, on_message)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    _reply({"ready": [str(b) for b in bound]})
    await stop.wait()
    fwd.close()


# ---------------------------------------------------------------------------------------
# Parent side: the forwarder child process


class _ReplyReader(asyncio.Protocol):
    """Reads the child's JSON reply lines and resolves the matching futures."""

    def __init__(self, ready: asyncio.Future[list[str]]) -> None:
        self.ready = ready
        self.waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.buf = bytearray()
        self.closed = False

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while (nl := self.buf.find(b"\n")) >= 0:
            line = bytes(self.buf[:nl])
            del self.buf[: nl + 1]
            with contextlib.suppress(ValueError):
                self._dispatch(json.loads(line))

    def _dispatch(self, msg: dict[str, Any]) -> None:
        if "ready" in msg and not self.ready.done():
            self.ready.set_result(list(msg["ready"]))
        fut = self.waiting.pop(msg.get("id", -1), None)
        if fut is not None and not fut.done():
            fut.set_result(msg)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        gone = RuntimeError("the forwarder process exited")
        futures: list[asyncio.Future[Any]] = [self.ready, *self.waiting.values()]
        for fut in futures:
            if not fut.done():
                fut.set_exception(gone)
        self.waiting.clear()


class ForwarderProcess:
    """`lbbench serve dnat --plan-json ...` under the supervisor, with its control pipe."""

    def __init__(self, supervisor: Supervisor, plan: ForwarderPlan, name: str = "userspace-dnat") -> None:
        self.supervisor = supervisor
        self.plan = plan
        self.name = name
        self.child: Child | None = None
        self._reader: _ReplyReader | None = None
        self._transport: asyncio.BaseTransport | None = None
        self._next_id = 0

    @property
    def pid(self) -> int | None:
        return self.child.pid if self.child is not None else None

    async def start(self, timeout_s: float = 20.0) -> list[str]:
        """Spawn; return the bound listener addresses once every listener accepts."""
        loop = asyncio.get_running_loop()
        argv = lbbench_argv("serve", "dnat", "--plan-json", self.plan.to_json())
        self.child = self.supervisor.spawn(self.name, argv, stdout=subprocess.PIPE)
        assert self.child.popen.stdout is not None
        # Own a dup of the pipe: the transport closes its file, the Popen keeps its own.
        pipe = os.fdopen(os.dup(self.child.popen.stdout.fileno()), "rb", buffering=0)
        self.child.popen.stdout.close()
        ready: asyncio.Future[list[str]] = loop.create_future()
        self._transport, proto = await loop.connect_read_pipe(lambda: _ReplyReader(ready), pipe)
        self._reader = proto
        try:
            return await asyncio.wait_for(ready, timeout_s)
        except BaseException:
            await self.stop()
            raise

    async def request(self, message: dict[str, Any], timeout_s: float = 5.0) -> dict[str, Any]:
        if self.child is None or self._reader is None or self._reader.closed:
            raise RuntimeError(f"{self.name} is not running")
        from lbbench.control import send

        self._next_id += 1
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._reader.waiting[self._next_id] = fut
        if not send(self.child.stdin, {"id": self._next_id, **message}):
            self._reader.waiting.pop(self._next_id, None)
            raise RuntimeError(f"{self.name} is gone")
        reply = await asyncio.wait_for(fut, timeout_s)
        if "error" in reply:
            raise ValueError(f"{self.name}: {reply['error']}")
        return reply

    async def set_endpoints(self, table: str, endpoints: Sequence[Endpoint]) -> None:
        await self.request({"endpoints": endpoints_message(table, endpoints)})

    async def counters(self) -> dict[str, float]:
        try:
            reply = await self.request({"stats": True}, timeout_s=2.0)
        except (RuntimeError, TimeoutError):
            return {}
        return {k: float(v) for k, v in reply.get("counters", {}).items()}

    async def stop(self, grace_s: float = 2.0) -> None:
        child, self.child = self.child, None
        if child is not None:
            if child.stdin is not None:
                with contextlib.suppress(OSError):
                    child.stdin.close()  # EOF on the control pipe: the child exits
            try:
                await asyncio.wait_for(child.wait(), grace_s)
            except TimeoutError:
                await child.stop(grace_s)
        if self._transport is not None:
            self._transport.close()
            self._transport = None


# ---------------------------------------------------------------------------------------
# The front end


class UserspaceDnat(Frontend):
    """kube-proxy-style random DNAT in a userspace L4 forwarder process."""

    name = "userspace-dnat"
    layer = "l4"

    def __init__(self, plan: FrontendPlan, supervisor: Supervisor, mode: Mode = "random") -> None:
        super().__init__(plan, supervisor)
        self.mode: Mode = mode
        self.services = {s.key: s for s in plan.services}
        self.process: ForwarderProcess | None = None

    async def start(self) -> None:
        fplan = forwarder_plan(self.plan.services, self.mode, self.plan.seed)
        if self.plan.artifacts_dir is not None:
            self.plan.artifacts_dir.mkdir(parents=True, exist_ok=True)
            (self.plan.artifacts_dir / "userspace-dnat.json").write_text(fplan.to_json() + "\n")
        process = ForwarderProcess(self.supervisor, fplan, self.name)
        await process.start()
        self.process = process

    async def update_endpoints(self, service_key: str, endpoints: tuple[Endpoint, ...]) -> None:
        if service_key not in self.services:
            raise ValueError(f"unknown service {service_key!r}")
        if self.process is None:
            raise RuntimeError("userspace-dnat is not started")
        await self.process.set_endpoints(service_key, endpoints)

    async def stop(self) -> None:
        process, self.process = self.process, None
        if process is not None:
            await process.stop()

    def entrypoint(self, service_key: str, via: ServiceType = "ClusterIP") -> Entrypoint:
        spec = self.services.get(service_key)
        if spec is None:
            raise ValueError(f"unknown service {service_key!r}")
        return entrypoint_of(spec, via)

    async def counters(self) -> dict[str, float]:
        return await self.process.counters() if self.process is not None else {}

    def pids(self) -> list[int]:
        pid = self.process.pid if self.process is not None else None
        return [pid] if pid is not None else []


# ---------------------------------------------------------------------------------------
# `lbbench serve dnat`


def add_serve_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--listen", action="append", default=[], metavar="VIP:PORT",
                   help="loopback address to accept on (repeatable; all share one endpoint table)")
    p.add_argument("--backend", action="append", default=[], metavar="IP:PORT",
                   help="endpoint (repeatable); none: every connection is reset, like kube-proxy's REJECT")
    p.add_argument("--mode", choices=("random", "rr"), default="random",
                   help="choice per new connection: uniform random (kube-proxy) or round robin (IPVS rr)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random choice")
    p.add_argument("--plan-json", help=argparse.SUPPRESS)  # lbbench's own use: several Services at once


def _cli_plan(args: argparse.Namespace) -> ForwarderPlan:
    if args.plan_json:
        return ForwarderPlan.from_json(args.plan_json)
    if not args.listen:
        raise ValueError("--listen VIP:PORT is required")
    listeners = tuple(Listener(parse_hostport(x), "service") for x in args.listen)
    backends = tuple(parse_hostport(b) for b in args.backend)
    for b in backends:
        if b.port == 0:
            raise ValueError(f"--backend {b}: port 0 is not a destination")
    plan = ForwarderPlan(listeners, (("service", backends),), args.mode, args.seed)
    plan.check()
    return plan


def serve_command(args: argparse.Namespace) -> int:
    import uvloop

    from lbbench.procs import die_with_parent

    die_with_parent()
    plan = _cli_plan(args)
    try:
        uvloop.run(serve_forwarder(plan))
    except OSError as e:  # e.g. address in use: one clear line
        raise ValueError(f"cannot listen: {e}") from None
    return 0
