"""Forwarder processes: the child's main loop, and the parent's handle on one or N of them.

A forwarder process (``lbbench serve dnat --plan-json ...``) is driven over its control
pipe (JSON lines on stdin, replies as JSON lines on stdout): ``{"id": n, "endpoints":
{...}}`` and ``{"id": n, "stats": true}``; its first stdout line is ``{"ready":
[addresses]}``.

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
import json
import os
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from lbbench.frontends.dnat.plan import Accept, ForwarderPlan
from lbbench.frontends.dnat.relay import Forwarder
from lbbench.model.addresses import HostPort, parse_hostport, require_loopback
from lbbench.model.service import Endpoint
from lbbench.system.procs import Child, Supervisor, lbbench_argv
from lbbench.system.sharedaccept import listen_socket

Reply = dict[str, Any]
PLAN_ARG_MAX = 100_000
_MIN_KEYS = ("endpoint_updates_total",)  # every worker applies each update: count it once


class ForwarderFailed(RuntimeError):
    """A forwarder process could not start (what it said, e.g. the address is in use)."""


def endpoints_message(service_key: str, endpoints: Sequence[Endpoint]) -> dict[str, Any]:
    return {"service": service_key,
            "endpoints": [{"pod": e.pod, "ip": e.ip, "port": e.port, "node": e.node} for e in endpoints]}


def _parse_endpoints(body: Mapping[str, Any]) -> tuple[str, list[HostPort]]:
    backends = [HostPort(require_loopback(str(e["ip"]), "endpoint IP"), int(e["port"]))
                for e in body["endpoints"]]
    return str(body["service"]), backends


def send_reply(message: Reply) -> None:
    sys.stdout.buffer.write(json.dumps(message, separators=(",", ":")).encode() + b"\n")
    sys.stdout.buffer.flush()


async def _serve_until_stopped(on_message: Callable[[dict[str, Any]], None], ready: Reply) -> None:
    """Attach the control pipe, announce readiness, wait for SIGTERM/SIGINT (stdin EOF exits)."""
    import signal

    from lbbench.system.control import attach_stdin_control

    loop = asyncio.get_running_loop()
    attach_stdin_control(loop, on_message)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    send_reply(ready)
    await stop.wait()


async def serve_forwarder(plan: ForwarderPlan) -> None:
    """Child main of one worker: listen, answer control messages, exit on a signal or stdin EOF."""
    fwd = Forwarder(plan)

    def on_message(msg: dict[str, Any]) -> None:
        out: Reply = {"id": msg.get("id")}
        try:
            if isinstance(msg.get("endpoints"), dict):
                fwd.set_endpoints(*_parse_endpoints(msg["endpoints"]))
                out["ok"] = True
            elif msg.get("stats"):
                out["counters"] = fwd.counters.snapshot()
        except (ValueError, KeyError, TypeError) as e:
            out["error"] = str(e)
        send_reply(out)

    bound = await fwd.start()
    try:
        await _serve_until_stopped(on_message, {"ready": [str(b) for b in bound]})
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
    tasks: set[asyncio.Task[None]] = set()

    async def handle(msg: dict[str, Any]) -> None:
        out: Reply = {"id": msg.get("id")}
        try:
            if isinstance(msg.get("endpoints"), dict):
                await pool.request({"endpoints": msg["endpoints"]})
                out["ok"] = True
            elif msg.get("stats"):
                out["counters"] = await pool.counters()
        except (ValueError, RuntimeError, TimeoutError) as e:
            out["error"] = str(e)
        send_reply(out)

    def on_message(msg: dict[str, Any]) -> None:
        task = asyncio.get_running_loop().create_task(handle(msg))  # sent to the workers in arrival order
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    try:
        bound = await pool.start()
        await _serve_until_stopped(on_message, {"ready": bound, "workers": pool.pids()})
    finally:
        await pool.stop()
        await sup.aclose()


# ---------------------------------------------------------------------------------------
# Parent side


class _ReplyReader(asyncio.Protocol):
    """Reads the child's JSON reply lines and resolves the matching futures."""

    def __init__(self, ready: asyncio.Future[list[str]]) -> None:
        self.ready = ready
        self.waiting: dict[int, asyncio.Future[Reply]] = {}
        self.buf = bytearray()
        self.closed = False

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while (nl := self.buf.find(b"\n")) >= 0:
            line = bytes(self.buf[:nl])
            del self.buf[: nl + 1]
            with contextlib.suppress(ValueError):
                self._dispatch(json.loads(line))

    def _dispatch(self, msg: Reply) -> None:
        if "ready" in msg and not self.ready.done():
            self.ready.set_result(list(msg["ready"]))
        if "failed" in msg and not self.ready.done():
            self.ready.set_exception(ForwarderFailed(str(msg["failed"])))
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

    def __init__(self, supervisor: Supervisor, plan: ForwarderPlan, name: str = "userspace-dnat",
                 ) -> None:
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
        plan = self.plan.to_json()
        if len(plan) > PLAN_ARG_MAX:  # one argv string is capped at 128 KiB: thousands of Services go in a file
            with tempfile.NamedTemporaryFile("w", prefix="lbbench-dnat-plan-", suffix=".json", delete=False) as f:
                f.write(plan)
            plan = "@" + f.name  # the child reads and deletes it
        argv = lbbench_argv("serve", "dnat", "--plan-json", plan)
        fds = (*self.plan.listen_fds, self.plan.loads_fd) if self.plan.listen_fds else ()
        self.child = self.supervisor.spawn(self.name, argv, stdout=subprocess.PIPE, pass_fds=fds)
        assert self.child.popen.stdout is not None
        # Own a dup of the pipe: the transport closes its file, the Popen keeps its own.
        pipe = os.fdopen(os.dup(self.child.popen.stdout.fileno()), "rb", buffering=0)
        self.child.popen.stdout.close()
        ready: asyncio.Future[list[str]] = loop.create_future()
        self._transport, proto = await loop.connect_read_pipe(lambda: _ReplyReader(ready), pipe)
        self._reader = proto
        try:
            return await asyncio.wait_for(ready, timeout_s)
        except ForwarderFailed as e:
            await self.stop()
            raise ForwarderFailed(f"{self.name}: {e}") from None
        except BaseException:
            await self.stop()
            raise

    async def request(self, message: dict[str, Any], timeout_s: float = 5.0) -> Reply:
        if self.child is None or self._reader is None or self._reader.closed:
            raise RuntimeError(f"{self.name} is not running")
        from lbbench.system.control import send

        self._next_id += 1
        fut: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
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

    async def request(self, message: dict[str, Any], timeout_s: float = 5.0) -> list[Reply]:
        if not self.processes:
            raise RuntimeError(f"{self.name} is not running")
        return list(await asyncio.gather(*(p.request(message, timeout_s) for p in self.processes)))

    async def set_endpoints(self, table: str, endpoints: Sequence[Endpoint]) -> None:
        await self.request({"endpoints": endpoints_message(table, endpoints)})

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
