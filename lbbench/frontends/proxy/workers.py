"""`lbbench serve proxy --workers N`: N proxy processes behind one listening socket, for throughput.

One queue per worker, not one shared queue: each worker is a whole proxy (its own central
queue, its own `maxconn` slots per backend, its own balancer and health checks), and a
connection stays with the worker that accepted it. So N workers with maxconn 1 let up to N
requests into a pod at once, and a request can wait in one worker's queue while another
worker has a free slot: it is N x (one queue), not M/M/c, and lbbench's theory models only
the single central queue (`workers = 1`, the default, used by every experiment unless set).
What it is for: comparing cores with cores against HAProxy's threads in `lbbench bench`.

This process (the manager) binds the listening socket and hands it to the workers, which
accept least-loaded first (lbbench.system.sharedaccept); it relays control messages to every
worker (acknowledged once all of them applied it), passes their notices up, and serves /stats and /metrics as the sum
of the workers' documents, fetched on request.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import signal
import subprocess
from collections.abc import Sequence
from typing import Any

from lbbench.frontends.proxy.config import ProxyConfig
from lbbench.frontends.proxy.frontend import open_proxy
from lbbench.frontends.proxy.stats import StatsProtocol, fetch, merge
from lbbench.model.addresses import HostPort, parse_hostport
from lbbench.model.service import read_endpoints_update
from lbbench.system.control import ChildChannel, Message, Notices, attach_requests
from lbbench.system.procs import Child, Supervisor
from lbbench.system.sharedaccept import create_loads, listen_socket

WORKER_FLAG = "--worker-of"  # hidden: LISTEN_FD,LOADS_FD,INDEX,WORKERS
STOP_GRACE_S = 7.0  # a worker gives requests in progress 5 s


def worker_args(listen_fd: int, loads_fd: int, index: int, workers: int) -> list[str]:
    return [WORKER_FLAG, f"{listen_fd},{loads_fd},{index},{workers}"]


def parse_worker_of(text: str) -> tuple[int, int, int, int]:
    listen_fd, loads_fd, index, workers = (int(x) for x in text.split(","))
    return listen_fd, loads_fd, index, workers


class _MergedStats(StatsProtocol):
    """The manager's stats port: every request fetches the workers' documents, then answers."""

    def __init__(self, manager: Manager) -> None:
        super().__init__(lambda: {})
        self.manager = manager
        self.tasks: set[asyncio.Task[None]] = set()

    def on_message_complete(self) -> None:
        path, self.url = self.url.split(b"?", 1)[0], b""
        task = asyncio.get_running_loop().create_task(self._answer(path, self.parser.should_keep_alive()))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _answer(self, path: bytes, keep: bool) -> None:
        doc = await self.manager.stats()
        self.reply(path, keep, lambda: doc)


class Manager:
    def __init__(self, config: ProxyConfig, workers: int, worker_argv: Sequence[str]) -> None:
        self.config = config
        self.workers = workers
        self.worker_argv = list(worker_argv)
        self.sup = Supervisor()
        self.children: list[Child] = []
        self.channels: list[ChildChannel] = []
        self.stats_addrs: list[HostPort] = []
        self.listen = ""
        self.notices = Notices()

    async def start(self) -> None:
        listen = self.config.listen
        sock = listen_socket(listen.host, listen.port)
        loads_fd = create_loads(self.workers)
        try:
            host, port = sock.getsockname()[:2]
            self.listen = f"{host}:{port}"
            for i in range(self.workers):
                argv = [*self.worker_argv, *worker_args(sock.fileno(), loads_fd, i, self.workers),
                        "--stats", f"{listen.host}:0"]
                self.children.append(self.sup.spawn(f"l7-proxy-{i}", argv, stdout=subprocess.PIPE,
                                                    pass_fds=(sock.fileno(), loads_fd)))
            opened = await asyncio.gather(*(open_proxy(c, f"l7-proxy worker {i}", functools.partial(self.relay, i))
                                            for i, c in enumerate(self.children)))
        finally:
            sock.close()  # the workers hold their own copies
            os.close(loads_fd)
        self.channels = [channel for channel, _ in opened]
        self.stats_addrs = [parse_hostport(ready["stats"]) for _, ready in opened]

    def relay(self, worker: int, notice: Message) -> None:
        """A worker's notice (its checks marked a backend down or up) goes on to the manager's parent."""
        self.notices.send({**notice, "worker": worker})

    async def on_control(self, msg: Message) -> Message:
        """Hand a request to every worker; applied once all of them acknowledged it."""
        if "endpoints" not in msg:
            return {}
        read_endpoints_update(msg["endpoints"])  # refused here, once, rather than by every worker
        await asyncio.gather(*(c.request({"endpoints": msg["endpoints"]}) for c in self.channels))
        return {"ok": True}

    async def stats(self) -> dict[str, Any]:
        docs = await asyncio.gather(*(_stats_of(a) for a in self.stats_addrs))
        present = [d for d in docs if d]
        return merge(present) if present else {}

    async def stop(self) -> None:
        await self.sup.aclose(STOP_GRACE_S)
        for channel in self.channels:
            channel.close()


async def _stats_of(addr: HostPort) -> dict[str, Any]:
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(addr.host, addr.port), 2.0)
    except (OSError, TimeoutError):
        return {}
    try:
        return await asyncio.wait_for(fetch(reader, writer), 2.0)
    except (OSError, TimeoutError, ValueError, asyncio.IncompleteReadError):
        return {}
    finally:
        writer.close()


async def serve_workers(config: ProxyConfig, workers: int, worker_argv: Sequence[str], *,
                        control: bool = True) -> None:
    """Run N workers until SIGTERM/SIGINT; announce readiness (with their pids) on stdout."""
    loop = asyncio.get_running_loop()
    manager = Manager(config, workers, worker_argv)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    server: asyncio.Server | None = None
    try:
        await manager.start()
        if control:
            attach_requests(loop, manager.on_control)
        stats = ""
        if config.stats is not None:
            server = await loop.create_server(lambda: _MergedStats(manager), config.stats.host, config.stats.port,
                                              reuse_address=True)
            host, port = server.sockets[0].getsockname()[:2]
            stats = f"{host}:{port}"
        manager.notices.announce({"event": "ready", "listen": manager.listen, "stats": stats or None,
                                  "workers": [c.pid for c in manager.children]})
        await stop.wait()
    finally:
        if server is not None:
            server.close()
        with contextlib.suppress(Exception):
            await manager.stop()
