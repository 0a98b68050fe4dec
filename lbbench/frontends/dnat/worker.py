"""Forwarder processes: the child's main loop, and the parent's handle on one or N of them.

A forwarder process (``lbbench serve dnat --plan-json ...``) is driven over its control
pipe (lbbench.system.control): requests ``{"id": n, "endpoints": {...}}`` (the one
Endpoints message, lbbench.model.service.endpoints_update) and ``{"id": n, "stats": true}``;
its announcement is ``{"ready": [addresses]}`` or ``{"failed": reason}``.

With N workers (:class:`ForwarderPool`) the workers share every listener, in one of two ways:
- ``shared`` (default): the pool binds each listening socket once and every worker inherits
  it; the least loaded worker accepts, as HAProxy hands a connection to its least loaded
  thread (lbbench.system.sharedaccept: 16 simultaneous connections over 2 workers split 8/8 to 6/10).
- ``reuseport``: each worker binds its own socket with SO_REUSEPORT and the kernel hashes
  the 4-tuple: even on average, uneven for few connections (16 over 2 workers: from 8/8 to
  4/12 in the same 12 bursts).
Worker i seeds its choice with seed + i. Endpoint updates go to every worker, counters are
summed (an update counted once), and every worker's pid is the front end's.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import tempfile
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from lbbench.frontends.dnat.plan import Accept, ForwarderPlan
from lbbench.frontends.dnat.relay import Forwarder
from lbbench.model.addresses import HostPort, parse_hostport
from lbbench.model.service import Endpoint, endpoints_update, read_endpoints_update
from lbbench.system.compiled import native_relay
from lbbench.system.control import ChildChannel, ChildGone, Message, attach_requests, reply
from lbbench.system.procs import Child, Supervisor, lbbench_argv
from lbbench.system.sharedaccept import listen_socket

PLAN_ARG_MAX = 100_000
_MIN_KEYS = ("endpoint_updates_total",)  # every worker applies each update: count it once


class ForwarderFailed(RuntimeError):
    """A forwarder process could not start (what it said, e.g. the address is in use)."""


async def _serve_until_stopped(handle: Callable[[Message], Awaitable[Message]], ready: Message) -> None:
    """Answer control requests, announce readiness, wait for SIGTERM/SIGINT (stdin EOF exits)."""
    import signal

    loop = asyncio.get_running_loop()
    attach_requests(loop, handle)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    reply(ready)
    await stop.wait()


def make_forwarder(plan: ForwarderPlan) -> Forwarder:
    """The native relay's forwarder when its engine is built (and not turned off), else the Python relay's."""
    if native_relay():
        from lbbench.frontends.dnat.native import NativeForwarder  # imports the C extension

        return NativeForwarder(plan)
    return Forwarder(plan)


async def serve_forwarder(plan: ForwarderPlan) -> None:
    """Child main of one worker: listen, answer control messages, exit on a signal or stdin EOF."""
    fwd = make_forwarder(plan)

    async def handle(msg: Message) -> Message:
        if "endpoints" in msg:
            table, endpoints = read_endpoints_update(msg["endpoints"])
            fwd.set_endpoints(table, (e.addr for e in endpoints))
            return {"ok": True}
        if msg.get("stats"):
            counters = fwd.counters.snapshot()
            if fwd.acceptors:  # shared accept: connections taken far above a sibling that did not come in time
                counters["accepts_forced_total"] = sum(a.forced for a in fwd.acceptors)
            return {"counters": counters}
        return {}

    bound = await fwd.start()
    try:
        await _serve_until_stopped(handle, {"ready": [str(b) for b in bound]})
    finally:
        fwd.close()


def run_forwarder(plan: ForwarderPlan, workers: int = 1, accept: Accept = "shared") -> None:
    """Serve `plan` in the foreground until a signal or stdin EOF (``lbbench serve dnat``).

    Raises ForwarderFailed with one clear line when it cannot start (e.g. the address is in use).
    """
    import uvloop

    try:
        uvloop.run(serve_forwarder(plan) if workers == 1 else serve_pool(plan, workers, accept))
    except OSError as e:
        raise ForwarderFailed(f"cannot listen: {e}") from None


async def serve_pool(plan: ForwarderPlan, workers: int, accept: Accept = "shared") -> None:
    """Child main of ``serve dnat --workers N``: N worker processes, this one relays control messages."""
    sup = Supervisor()
    pool = ForwarderPool(sup, plan, workers, accept=accept)

    async def handle(msg: Message) -> Message:
        if "endpoints" in msg:
            read_endpoints_update(msg["endpoints"])  # refused here, once, rather than by every worker
            await pool.request({"endpoints": msg["endpoints"]})
            return {"ok": True}
        if msg.get("stats"):
            return {"counters": await pool.counters()}
        return {}

    try:
        bound = await pool.start()
        await _serve_until_stopped(handle, {"ready": bound, "workers": pool.pids()})
    finally:
        await pool.stop()
        await sup.aclose()


# ---------------------------------------------------------------------------------------
# Parent side


class ForwarderProcess:
    """`lbbench serve dnat --plan-json ...` under the supervisor, with its control channel."""

    def __init__(self, supervisor: Supervisor, plan: ForwarderPlan, name: str = "userspace-dnat") -> None:
        self.supervisor = supervisor
        self.plan = plan
        self.name = name
        self.child: Child | None = None
        self.channel: ChildChannel | None = None

    @property
    def pid(self) -> int | None:
        return self.child.pid if self.child is not None else None

    async def start(self, timeout_s: float = 20.0) -> list[str]:
        """Spawn; return the bound listener addresses once every listener accepts."""
        plan = self.plan.to_json()
        if len(plan) > PLAN_ARG_MAX:  # one argv string is capped at 128 KiB: thousands of Services go in a file
            with tempfile.NamedTemporaryFile("w", prefix="lbbench-dnat-plan-", suffix=".json", delete=False) as f:
                f.write(plan)
            plan = "@" + f.name  # the child reads and deletes it
        argv = lbbench_argv("serve", "dnat", "--plan-json", plan)
        fds = (*self.plan.listen_fds, self.plan.loads_fd) if self.plan.listen_fds else ()
        fds = (*self.plan.listen_fds, self.plan.loads_fd) if self.plan.listen_fds else ()
        self.child = self.supervisor.spawn(self.name, argv, stdout=subprocess.PIPE, pass_fds=fds)
        try:
            self.channel = await ChildChannel.open(self.child, self.name)
            ready = await self.channel.announcement(timeout_s)
            if "failed" in ready:
                raise ForwarderFailed(f"{self.name}: {ready['failed']}")
            return [str(a) for a in ready["ready"]]
        except BaseException:
            await self.stop()
            raise

    async def request(self, message: Message, timeout_s: float = 5.0) -> Message:
        if self.channel is None:
            raise ChildGone(f"{self.name} is not running")
        return await self.channel.request(message, timeout_s)

    async def set_endpoints(self, table: str, endpoints: Sequence[Endpoint]) -> None:
        await self.request({"endpoints": endpoints_update(table, endpoints)})

    async def counters(self) -> dict[str, float]:
        try:
            answer = await self.request({"stats": True}, timeout_s=2.0)
        except (RuntimeError, TimeoutError):
            return {}
        return {k: float(v) for k, v in answer.get("counters", {}).items()}

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
        if self.channel is not None:
            self.channel.close()
            self.channel = None


def merge_counters(parts: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """The workers' counters as one forwarder's: summed, but an update applied by all counts once."""
    out: dict[str, float] = {}
    for part in parts:
        for key, value in part.items():
            if key in out and key in _MIN_KEYS:
                out[key] = min(out[key], value)
            else:
                out[key] = out.get(key, 0.0) + value
    return out


class ForwarderPool:
    """N forwarder processes sharing every listener (one inherited socket, or SO_REUSEPORT; see above)."""

    def __init__(self, supervisor: Supervisor, plan: ForwarderPlan, workers: int = 1,
                 name: str = "userspace-dnat", accept: Accept = "shared") -> None:
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.supervisor = supervisor
        self.plan = plan
        self.workers = workers
        self.name = name
        self.accept: Accept = accept
        self.processes: list[ForwarderProcess] = []

    def _spawn(self, index: int, plan: ForwarderPlan, fds: tuple[int, ...] = (), loads_fd: int = -1
               ) -> ForwarderProcess:
        name = self.name if self.workers == 1 else f"{self.name}-{index}"
        process = ForwarderProcess(self.supervisor, plan.for_worker(index, self.workers, fds, loads_fd), name)
        self.processes.append(process)
        return process

    async def start(self, timeout_s: float = 20.0) -> list[str]:
        """Shared: bind here, hand every worker the sockets. Reuseport: worker 0 binds first, the
        others join on the very ports it got (port 0 in the plan)."""
        if self.workers > 1 and self.accept == "shared":
            return await self._start_shared(timeout_s)
        try:
            bound = await self._spawn(0, self.plan).start(timeout_s)
            shared = self.plan.bound_to([parse_hostport(b) for b in bound])
            rest = [self._spawn(i, shared) for i in range(1, self.workers)]
            await asyncio.gather(*(p.start(timeout_s) for p in rest))
        except BaseException:
            await self.stop()
            raise
        return bound

    async def _start_shared(self, timeout_s: float) -> list[str]:
        from lbbench.system.sharedaccept import create_loads

        socks = _listen(self.plan, self.name)
        loads_fd = create_loads(self.workers)
        try:
            bound = [HostPort(*s.getsockname()[:2]) for s in socks]
            plan = self.plan.bound_to(bound)
            fds = tuple(s.fileno() for s in socks)
            await asyncio.gather(*(self._spawn(i, plan, fds, loads_fd).start(timeout_s)
                                   for i in range(self.workers)))
        except BaseException:
            await self.stop()
            raise
        finally:
            for s in socks:  # the workers hold their own copies
                s.close()
            os.close(loads_fd)
        return [str(b) for b in bound]

    async def request(self, message: dict[str, Any], timeout_s: float = 5.0) -> list[Message]:
        if not self.processes:
            raise RuntimeError(f"{self.name} is not running")
        return list(await asyncio.gather(*(p.request(message, timeout_s) for p in self.processes)))

    async def set_endpoints(self, table: str, endpoints: Sequence[Endpoint]) -> None:
        await self.request({"endpoints": endpoints_update(table, endpoints)})

    async def counters(self) -> dict[str, float]:
        parts = await asyncio.gather(*(p.counters() for p in self.processes))
        out = merge_counters([p for p in parts if p])
        if out:
            out["workers"] = float(sum(1 for p in parts if p))
        return out

    def pids(self) -> list[int]:
        return [p.pid for p in self.processes if p.pid is not None]

    async def stop(self) -> None:
        processes, self.processes = self.processes, []
        await asyncio.gather(*(p.stop() for p in processes))


def _listen(plan: ForwarderPlan, name: str) -> list[socket.socket]:
    """One listening socket per listener of `plan`, for the workers to inherit (ForwarderFailed if one is taken)."""
    socks: list[socket.socket] = []
    lst = None
    try:
        for lst in plan.listeners:
            socks.append(listen_socket(lst.addr.host, lst.addr.port))
    except OSError as e:
        for s in socks:
            s.close()
        where = f" on {lst.addr}" if lst is not None else ""
        raise ForwarderFailed(f"{name}: cannot listen{where}: {(e.strerror or str(e)).lower()}") from None
    return socks
