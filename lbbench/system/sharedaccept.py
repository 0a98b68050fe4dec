"""Worker processes accepting from one shared listening socket, the least loaded first.

A listening socket inherited by every worker is woken in all of them (epoll, level-triggered)
and libuv accepts every queued connection in one go, so a burst (wrk opens its 16 connections
at once) lands on whichever worker woke first: measured 0/16 to 16/0 over 2 workers, worse
than SO_REUSEPORT's hash. HAProxy's threads instead hand each connection to the least loaded
thread. Here each worker publishes its active connection count in a small shared array (a
memfd every worker maps). A worker more than SLACK + BURST connections above the least loaded
one steps aside for DEFER_S (and says so in the same array, with its count at that moment: see
Loads.excess) and then looks again (a burst: wrk opening its 16 connections at
once); after MAX_DEFERS in a row (20 ms) it accepts anyway, so a stuck or dead worker (whose
count no longer moves) cannot stop the others. 20 ms, not 2: on this 2-core machine at load 13,
a sibling woken for the same socket was often not scheduled within 2 ms. A worker only a little
above the least loaded (up to BURST over the slack) does not wait: it yields the CPU once
(sched_yield, a sibling woken for the same connection may take it first) and accepts. With
connections coming and going (Connection: close) the counts are small and skewed all the time,
and stepping aside for every such skew cost each new connection milliseconds: wrk -c16 with
Connection: close through 2 workers to nginx went from 3,600 to 11,600 connections/s (1 worker:
12,200; SO_REUSEPORT: 15,200), while 16 connections opened at once still split within 4.
With the native relay's shorter connections that test gave 12,600 connections/s (one worker:
25,000) until a worker stepping aside counted, for the others, with the load it stepped aside
with: its connections closing while it waited made it look least loaded, the other stepped aside
too, and both waited while connections queued. Now 18,000-18,600 (the Python relay: ~8,500
either way on a busier machine), and bursts still split within 4.
The cost is per new connection, never per request: a Python accept, a look at N integers, and
per step-aside two epoll_ctl calls and a timer. Users: userspace-dnat's workers and the l7-proxy's.
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
BURST = 3  # above the slack by more than this, a worker steps aside (a burst); by less, it only yields
SLACK = 1  # this many above the least loaded is balanced
# After an accept fails for want of a resource (EMFILE, ENFILE, ENOBUFS, ENOMEM) the connection stays
# queued and the listener stays readable: looking again at once would spin a core. Stop looking this
# long, as asyncio's own servers do (for 1 s) and HAProxy does (until an fd is freed).
ACCEPT_RETRY_S = 0.05
_SLOT = 8  # bytes per worker: a signed 64-bit count


def create_loads(workers: int) -> int:
    """A shared, zeroed array of `workers` counts and as many step-aside marks; the fd to pass to every worker."""
    fd = os.memfd_create("lbbench-dnat-loads", 0)
    os.ftruncate(fd, 2 * workers * _SLOT)
    os.set_inheritable(fd, True)
    return fd


class Loads:
    """This worker's view of the shared counts and step-aside marks: its own slots written, everyone's read."""

    def __init__(self, fd: int, workers: int, index: int) -> None:
        self.map = mmap.mmap(fd, 2 * workers * _SLOT)
        self._view = memoryview(self.map).cast("q")
        self.counts = self._view[:workers]
        self.aside = self._view[workers:]  # while that worker steps aside: its count then, plus one
        self.index = index

    @property
    def mine(self) -> int:
        return int(self.counts[self.index])

    @mine.setter
    def mine(self, value: int) -> None:
        self.counts[self.index] = value

    def excess(self) -> int:
        """How many connections this worker has above the least loaded one, less the slack.

        A worker stepping aside counts with its load when it stepped aside (`aside` holds it, plus
        one; 0: accepting): its connections closing while it waits must not make it the least
        loaded, or the others step aside too and nobody accepts until the first one looks again.
        """
        least = min(a - 1 if a else c for c, a in zip(self.counts, self.aside, strict=True))
        return int(self.counts[self.index] - least) - SLACK

    def step_aside(self, aside: bool) -> None:
        """Say (or unsay) to the siblings that this worker is stepping aside, with its load now."""
        self.aside[self.index] = self.counts[self.index] + 1 if aside else 0

    def close(self) -> None:
        self.counts.release()
        self.aside.release()
        self._view.release()
        self.map.close()


class SharedAcceptor:
    """Accepts from `sock` (shared with the other workers), stepping aside while far above the least loaded."""

    def __init__(self, sock: socket.socket, loads: Loads, factory: Callable[[], asyncio.Protocol] | None = None,
                 *, handover: Callable[[], bool] | None = None) -> None:
        """Each accepted connection is served by `factory`'s protocol on this loop; or, with `handover`,
        the acceptor only decides when to take one and `handover()` accepts it (False: none was queued)
        and serves it elsewhere, counting it in `loads` itself (userspace-dnat's native relay)."""
        if (factory is None) == (handover is None):
            raise ValueError("give a protocol factory or a handover, not both")
        self.sock = sock
        self.loads = loads
        self.factory = factory
        self.handover = handover
        self.loop = asyncio.get_running_loop()
        self.defers = 0
        # connections taken while still far above a sibling, after MAX_DEFERS: the siblings were not
        # scheduled in time (a starved machine) or are stuck; counted, so that a balance figure can be
        # told from a scheduling one
        self.forced = 0
        self.closed = False
        self.tasks: set[asyncio.Task[None]] = set()
        sock.setblocking(False)
        self.loop.add_reader(sock.fileno(), self._readable)

    def _readable(self) -> None:
        excess = self.loads.excess()
        if excess > BURST and self.defers < MAX_DEFERS:
            self.defers += 1
            self.loads.step_aside(True)
            self.pause(DEFER_S)
            return
        if excess > BURST:
            self.forced += 1
        self.defers = 0
        if excess > 0:
            os.sched_yield()
        try:
            if self.handover is not None:
                self.handover()
                return
            conn, _ = self.sock.accept()
        except (BlockingIOError, InterruptedError, ConnectionAbortedError):
            return  # a sibling took it
        except OSError:
            self.pause(ACCEPT_RETRY_S)  # e.g. EMFILE: the connection stays queued for a sibling or for later
            return
        self.loads.mine += 1  # at once, so the siblings see it before connection_made counts it
        task = self.loop.create_task(self._serve(conn))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _serve(self, conn: socket.socket) -> None:
        assert self.factory is not None
        try:
            await self.loop.connect_accepted_socket(self.factory, conn)
        except OSError:
            conn.close()
        finally:
            self.loads.mine -= 1  # connection_made has counted it by now

    def pause(self, seconds: float) -> None:
        """Stop accepting for `seconds` (a sibling may take what is queued meanwhile)."""
        self.loop.remove_reader(self.sock.fileno())
        self.loop.call_later(seconds, self._resume)

    def _resume(self) -> None:
        if not self.closed:
            self.loads.step_aside(False)
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
