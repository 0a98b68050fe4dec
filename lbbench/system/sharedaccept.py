"""Worker processes accepting from one shared listening socket, the least loaded first.

A listening socket inherited by every worker is woken in all of them (epoll, level-triggered)
and libuv accepts every queued connection in one go, so a burst (wrk opens its 16 connections
at once) lands on whichever worker woke first: measured 0/16 to 16/0 over 2 workers, worse
than SO_REUSEPORT's hash. HAProxy's threads instead hand each connection to the least loaded
thread. Here each worker publishes its active connection count in a small shared array (a
memfd every worker maps) and accepts only while no other worker has more than SLACK fewer;
otherwise it steps aside for DEFER_S and then looks again. After MAX_DEFERS in a row (20 ms) it accepts anyway,
so a stuck or dead worker (whose count no longer moves) cannot stop the others. 20 ms, not
2: on this 2-core machine at load 13, a sibling woken for the same socket was often not
scheduled within 2 ms (16 connections then split up to 16/0); with 20 ms and no slack they
split 8/8 in 12 bursts of 12, with SLACK 1 from 8/8 to 6/10 (load 17).
The cost is per new connection, never per request: a Python accept, a look at N integers, and
per step-aside two epoll_ctl calls and a timer. Measured with wrk -c16 through 2 userspace-dnat
workers to nginx (CPU s per 10k requests of the forwarder, interleaved rounds): keep-alive
0.27-0.35 shared vs 0.29-0.38 reuseport, with Connection: close 3.8-4.2 vs 2.8-3.3 without
slack and 3.4-3.7 vs 3.0-4.1 with SLACK 1. Users: userspace-dnat's workers and the l7-proxy's.
"""

from __future__ import annotations

import asyncio
import contextlib
import mmap
import os
import socket
from collections.abc import Callable

DEFER_S = 0.001  # a woken sibling's chance to take the connection
MAX_DEFERS = 20
SLACK = 1  # accept while at most this many above the least loaded: fewer step-asides (each costs epoll_ctl
# calls and a timer) when connections come and go (Connection: close), a burst still split within 1
_SLOT = 8  # bytes per worker: a signed 64-bit count


def create_loads(workers: int) -> int:
    """A shared, zeroed array of `workers` counts; the fd to pass to every worker."""
    fd = os.memfd_create("lbbench-dnat-loads", 0)
    os.ftruncate(fd, workers * _SLOT)
    os.set_inheritable(fd, True)
    return fd


class Loads:
    """This worker's view of the shared counts: its own slot written, everyone's read."""

    def __init__(self, fd: int, workers: int, index: int) -> None:
        self.map = mmap.mmap(fd, workers * _SLOT)
        self.counts = memoryview(self.map).cast("q")
        self.index = index

    @property
    def mine(self) -> int:
        return int(self.counts[self.index])

    @mine.setter
    def mine(self, value: int) -> None:
        self.counts[self.index] = value

    def least_loaded(self) -> bool:
        """No other worker has SLACK fewer connections than this one."""
        mine = self.counts[self.index] - SLACK
        return all(mine <= other for other in self.counts)

    def close(self) -> None:
        self.counts.release()
        self.map.close()


class SharedAcceptor:
    """Accepts from `sock` (shared with the other workers) while this worker is the least loaded."""

    def __init__(self, sock: socket.socket, loads: Loads, factory: Callable[[], asyncio.Protocol]) -> None:
        self.sock = sock
        self.loads = loads
        self.factory = factory
        self.loop = asyncio.get_running_loop()
        self.defers = 0
        self.closed = False
        self.tasks: set[asyncio.Task[None]] = set()
        sock.setblocking(False)
        self.loop.add_reader(sock.fileno(), self._readable)

    def _readable(self) -> None:
        if not self.loads.least_loaded() and self.defers < MAX_DEFERS:
            self.defers += 1
            self.loop.remove_reader(self.sock.fileno())
            self.loop.call_later(DEFER_S, self._resume)
            return
        self.defers = 0
        try:
            conn, _ = self.sock.accept()
        except (BlockingIOError, InterruptedError, ConnectionAbortedError):
            return  # a sibling took it
        except OSError:
            return  # e.g. EMFILE: the connection stays queued for a sibling or the next wake-up
        self.loads.mine += 1  # at once, so the siblings see it before connection_made counts it
        task = self.loop.create_task(self._serve(conn))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _serve(self, conn: socket.socket) -> None:
        try:
            await self.loop.connect_accepted_socket(self.factory, conn)
        except OSError:
            conn.close()
        finally:
            self.loads.mine -= 1  # connection_made has counted it by now

    def _resume(self) -> None:
        if not self.closed:
            self.loop.add_reader(self.sock.fileno(), self._readable)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        with contextlib.suppress(OSError, ValueError):
            self.loop.remove_reader(self.sock.fileno())
        self.sock.close()


def listen_socket(host: str, port: int, backlog: int = 4096) -> socket.socket:
    """A listening TCP socket for worker processes to inherit (OSError if the address is taken)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(backlog)
        sock.set_inheritable(True)
    except OSError:
        sock.close()
        raise
    return sock
