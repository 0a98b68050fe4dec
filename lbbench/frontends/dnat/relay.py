"""The forwarder's data path in Python: accept, pick an endpoint, connect, splice (runs in the child).

Per *new connection* one endpoint of the Service's last-synced table is picked (seeded
uniform random, or round robin), and the two TCP connections are spliced by a pair of
``asyncio.Protocol`` objects. This is the pure-Python relay: the fallback where the native
engine (_crelay.c, driven by .native's NativeForwarder, which reuses Forwarder's tables, pick
and counters) is not built, or LBBENCH_PURE_RELAY=1; both pass the same tests, and the engine
keeps this relay's behaviour (its docstring says how, point by point).

Measured under wrk (keep-alive HTTP, nginx behind, one worker): per request 2 reads + 2 writes
+ ~0.25 epoll_wait, as HAProxy in mode tcp; ~7.5 us of system time (the loopback write()
delivers to the peer socket and wakes its reader) and ~1.2 us of user time, of which the two
data_received calls below are ~0.2 us and the rest is uvloop's and CPython's per-callback work
(bytes object, context, GIL, write path). The native engine makes the same syscalls with
~0.25 us of user time. So the hot path is one write per received chunk and nothing else.
uvloop's transports already set TCP_NODELAY on accepted and connected sockets and read into
one 256 KiB loop-wide buffer; a BufferedProtocol (get_buffer/buffer_updated) only adds a
Python call per read.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import random
import socket
import struct
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, cast

from lbbench.frontends.dnat.plan import ForwarderPlan
from lbbench.model.addresses import HostPort

if TYPE_CHECKING:
    from lbbench.system.sharedaccept import SharedAcceptor

PENDING_MAX = 64 * 1024  # client bytes held while the pod connection is being set up
_LINGER_RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends RST


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

    __slots__ = ("counters", "got_eof", "lost", "peer", "transport")

    transport: asyncio.Transport
    peer: _Side | None

    def __init__(self, counters: Counters) -> None:
        self.counters = counters
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

    __slots__ = ("connecting", "fwd", "paused_pending", "pending", "table")

    def __init__(self, fwd: Forwarder, table: Table) -> None:
        super().__init__(fwd.counters)
        self.fwd = fwd
        self.table = table
        self.pending: bytearray | None = None
        self.paused_pending = False
        self.connecting: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        counters = self.counters
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
            self.counters.connect_failures += 1
            if not self.lost:
                _reset(self.transport)
        finally:
            self.connecting = None

    def data_received(self, data: bytes) -> None:
        peer = self.peer
        if peer is None:
            self._hold(data)
            return
        try:
            peer.transport.write(data)
        except RuntimeError:  # the pod's socket closed this very iteration; its reset follows
            return
        self.counters.bytes_up += len(data)

    def _hold(self, data: bytes) -> None:
        """Keep what the client sends before the pod connection is up (bounded)."""
        pending = self.pending
        if pending is None:
            return  # rejected; the reset is on its way
        pending += data
        if len(pending) > PENDING_MAX and not self.paused_pending:
            self.paused_pending = True
            self.transport.pause_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.counters.active -= 1
        if self.connecting is not None:
            self.connecting.cancel()
        super().connection_lost(exc)


class _PodSide(_Side):
    """The forwarder's connection to the chosen pod."""

    __slots__ = ("client",)

    def __init__(self, client: _ClientSide) -> None:
        super().__init__(client.counters)
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
            self.transport.write(pending)  # handed over, not copied: nothing else holds it
            self.counters.bytes_up += len(pending)
        if client.got_eof:
            client.forward_eof(self)

    def data_received(self, data: bytes) -> None:
        try:
            self.client.transport.write(data)
        except RuntimeError:  # the client's socket closed this very iteration; its reset follows
            return
        self.counters.bytes_down += len(data)


class Forwarder:
    """All listeners of one forwarder process and their endpoint tables."""

    def __init__(self, plan: ForwarderPlan) -> None:
        self.plan = plan
        self.tables = {name: Table(backends) for name, backends in plan.tables}
        self.rng = random.Random(plan.seed)
        self.round_robin = plan.mode == "rr"
        self.counters = Counters()
        self.servers: list[asyncio.Server] = []
        self.acceptors: list[SharedAcceptor] = []

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

    def client_protocol(self, table: Table) -> _ClientSide:
        """Protocol of one accepted connection (a method, so tests can watch the sides)."""
        return _ClientSide(self, table)

    async def start(self) -> list[HostPort]:
        loop = asyncio.get_running_loop()
        bound: list[HostPort] = []
        if self.plan.listen_fds:
            return self._accept_shared()
        for lst in self.plan.listeners:
            server = await loop.create_server(
                functools.partial(self.client_protocol, self.tables[lst.table]),
                lst.addr.host, lst.addr.port, reuse_address=True, backlog=4096,
                reuse_port=self.plan.reuse_port or None,
            )
            self.servers.append(server)
            host, port = server.sockets[0].getsockname()[:2]
            bound.append(HostPort(host, port))
        return bound

    def _accept_shared(self) -> list[HostPort]:
        """Listening sockets inherited from the pool, shared with the other workers (see .accept)."""
        from lbbench.frontends.dnat.accept import SharedCounters  # it builds on Counters
        from lbbench.system.sharedaccept import Loads, SharedAcceptor

        loads = Loads(self.plan.loads_fd, self.plan.workers, self.plan.worker)
        self.counters = SharedCounters(loads)
        bound = []
        for fd, lst in zip(self.plan.listen_fds, self.plan.listeners, strict=True):
            sock = socket.socket(fileno=fd)
            factory = functools.partial(self.client_protocol, self.tables[lst.table])
            self.acceptors.append(SharedAcceptor(sock, loads, factory))
            bound.append(HostPort(*sock.getsockname()[:2]))
        return bound

    def close(self) -> None:
        for server in self.servers:
            server.close()
        for acceptor in self.acceptors:
            acceptor.close()
