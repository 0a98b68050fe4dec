"""The forwarder on the native relay engine (_crelay.c): Python accepts and picks, C splices.

Python keeps what happens once per new connection: accepting (its own listening sockets, or the
SharedAcceptor's least-loaded-first turn on an inherited one), picking the endpoint
(Forwarder.pick: the same seeded sequence as the Python relay) and rejecting when the table is
empty. The accepted fd and the endpoint's address go to the engine, whose thread connects and
relays everything after, without the GIL: keep-alive traffic runs no Python at all. The engine
keeps the counters (and, with shared accept, this worker's count in the Loads array).

Measured (one worker, wrk keep-alive to nginx, 2-core VM): per request 0.25 us of user time and
7.4 us of system time, against the Python relay's 1.2 us and 7.7 us, with the same syscalls; in
`lbbench bench --only l4`, CPU per 10k requests 0.89x haproxy-tcp's (the Python relay: 1.07x).

Which relay runs: this one when the extension imports, the Python relay (relay.py) when it is
missing or LBBENCH_PURE_RELAY=1 (lbbench.system.compiled.native_relay; .worker.make_forwarder).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import socket

from lbbench.frontends.dnat import _crelay
from lbbench.frontends.dnat.plan import ForwarderPlan
from lbbench.frontends.dnat.relay import Counters, Forwarder, Table
from lbbench.model.addresses import HostPort
from lbbench.system.sharedaccept import ACCEPT_RETRY_S, Loads, SharedAcceptor

ACCEPT_BATCH = 64  # connections accepted per readable listener before the loop's other work


class EngineCounters(Counters):
    """The engine's counters (read when asked), and the endpoint updates Python applies."""

    __slots__ = ("engine",)

    def __init__(self, engine: _crelay.Engine) -> None:
        super().__init__()
        self.engine = engine

    def snapshot(self) -> dict[str, float]:
        s = self.engine.stats()
        return {
            "connections_total": s["accepted"],
            "connections_active": s["active"],
            "rejected_no_endpoints_total": s["rejected"],
            "connect_failures_total": s["connect_failures"],
            "bytes_client_to_pod_total": s["bytes_up"],
            "bytes_pod_to_client_total": s["bytes_down"],
            "endpoint_updates_total": self.updates,
        }


class NativeForwarder(Forwarder):
    """A Forwarder whose connections the C engine relays (same plan, tables, picks and counters)."""

    def __init__(self, plan: ForwarderPlan) -> None:
        super().__init__(plan)
        self.engine = _crelay.Engine()
        self.counters = EngineCounters(self.engine)
        self.listeners: list[socket.socket] = []
        self.loop: asyncio.AbstractEventLoop | None = None

    def hand_over(self, fd: int, table: Table) -> None:
        """One accepted connection: reject it, or give it to the engine with the picked endpoint."""
        backend = self.pick(table)
        if backend is None:
            self.engine.reject(fd)
        else:
            self.engine.relay(fd, backend.host, backend.port)

    def _accept(self, lfd: int, table: Table) -> None:
        engine = self.engine
        for _ in range(ACCEPT_BATCH):
            try:
                fd = engine.accept(lfd)
            except OSError:  # e.g. EMFILE: it stays queued; looking again at once would spin
                self._pause(lfd, table)
                return
            if fd < 0:
                return
            self.hand_over(fd, table)

    def _pause(self, lfd: int, table: Table) -> None:
        """Stop accepting on `lfd` for ACCEPT_RETRY_S (as SharedAcceptor.pause)."""
        assert self.loop is not None
        self.loop.remove_reader(lfd)
        self.loop.call_later(ACCEPT_RETRY_S, self._resume, lfd, table)

    def _resume(self, lfd: int, table: Table) -> None:
        if self.loop is not None and any(sock.fileno() == lfd for sock in self.listeners):
            self.loop.add_reader(lfd, self._accept, lfd, table)

    def _accept_one(self, lfd: int, table: Table) -> bool:
        """The SharedAcceptor's turn: one connection at most (it looks at the loads between two).
        OSError (e.g. EMFILE) goes to the acceptor, which pauses."""
        fd = self.engine.accept(lfd)
        if fd < 0:
            return False  # a sibling took it
        self.hand_over(fd, table)
        return True

    async def start(self) -> list[HostPort]:
        if self.plan.listen_fds:
            return self._accept_shared()
        loop = self.loop = asyncio.get_running_loop()
        bound: list[HostPort] = []
        for lst in self.plan.listeners:
            sock = _listen(lst.addr, self.plan.reuse_port)
            self.listeners.append(sock)
            loop.add_reader(sock.fileno(), self._accept, sock.fileno(), self.tables[lst.table])
            bound.append(HostPort(*sock.getsockname()[:2]))
        return bound

    def _accept_shared(self) -> list[HostPort]:
        loads = Loads(self.plan.loads_fd, self.plan.workers, self.plan.worker)
        self.engine.share_loads(loads.counts, loads.index)  # the engine adds and removes this worker's pairs
        bound = []
        for fd, lst in zip(self.plan.listen_fds, self.plan.listeners, strict=True):
            sock = socket.socket(fileno=fd)
            take = functools.partial(self._accept_one, fd, self.tables[lst.table])
            self.acceptors.append(SharedAcceptor(sock, loads, handover=take))
            bound.append(HostPort(*sock.getsockname()[:2]))
        return bound

    def close(self) -> None:
        super().close()
        for sock in self.listeners:
            if self.loop is not None:
                with contextlib.suppress(OSError, ValueError):
                    self.loop.remove_reader(sock.fileno())
            sock.close()
        self.listeners = []
        self.engine.close()


def _listen(addr: HostPort, reuse_port: bool) -> socket.socket:
    """A non-blocking listening socket as uvloop's create_server makes it (its error text too)."""
    sock = socket.socket(socket.AF_INET6 if ":" in addr.host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        try:
            sock.bind((addr.host, addr.port))
        except OSError as e:
            raise OSError(e.errno, f"error while attempting to bind on address {(addr.host, addr.port)!r}: "
                                   f"{(e.strerror or str(e)).lower()}") from None
        sock.listen(4096)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock

