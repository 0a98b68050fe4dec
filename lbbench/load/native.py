"""The worker on the native client engine (_engine.c): C sends and reads, Python records.

The engine's thread issues the worker's whole schedule (open loop) or runs its users (closed loop:
each sends, waits for the answer, thinks, sends again, as worker.Users) and every connection, keep-alive
or one per request (close mode), without the GIL (the semantics of HttpClient, see _engine.c); Python wakes up
every DRAIN_EVERY_S, takes the finished requests as one packed buffer (RECORD, viewed by numpy
without a copy per row) and hands them to Recorder.on_records, which bins and counts them in bulk.
`EngineDriver` stands in for both the Dispatcher and the HttpClient in Worker._drive (start, stop,
finished; wait_idle, abort_all, close), so the worker's progress reports, stop grace, abort count,
CPU accounting (the thread is in RUSAGE_SELF) and result message are the same for both clients.

Which client runs: this one when the extension imports, the Python client when it is missing or
when LBBENCH_PURE_CLIENT=1 (lbbench.system.compiled.native_client).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import sys
import threading
from typing import Any

import numpy as np

from lbbench.load import _engine
from lbbench.load.recorder import Recorder

DRAIN_EVERY_S = 0.02  # how often Python takes the finished records (and checks for the end)
BOOKKEEPING_NICE = 10  # the worker's Python thread once the engine runs (a thread's own nice value)
# one finished request, as _engine.c's rec_t lays it out (natural alignment)
RECORD = np.dtype([
    ("intended", "f8"), ("issued", "f8"), ("sent", "f8"), ("done", "f8"), ("freed", "f8"),
    ("queue_ms", "f8"), ("service_ms", "f8"), ("proxy_queue_ms", "f8"), ("proxy_upstream_ms", "f8"),
    ("conn_id", "i8"), ("pod", "i4"), ("pod_ip", "i4"), ("tag", "i4"), ("status", "i2"), ("error", "i1"),
    ("new_conn", "i1"),
], align=True)
assert RECORD.itemsize == _engine.RECORD_SIZE, "RECORD does not match _engine.c's rec_t"


def resolve(host: str, port: int) -> str:
    """The target's IP address (the engine connects to an address, as the client's first lookup would)."""
    return str(socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][4][0])


class EngineDriver:
    """One worker's load on the engine: the Dispatcher's (or Users') and the HttpClient's part in Worker._drive."""

    def __init__(self, engine: _engine.Engine, times: np.ndarray[Any, np.dtype[np.float64]],
                 recorder: Recorder, users: tuple[float, float] | None = None) -> None:
        self.engine = engine
        self.times = np.ascontiguousarray(times, dtype=np.float64)  # sends, or the users' first sends
        self.users = users  # closed loop: (end, think_s)
        self.recorder = recorder
        self.loop = asyncio.get_running_loop()
        self.finished: asyncio.Future[None] = self.loop.create_future()
        self._idle_waiters: list[asyncio.Future[None]] = []
        self._tables: tuple[list[str], list[str]] = ([""], [""])
        self._handle: asyncio.TimerHandle | None = None
        self.outstanding = 0
        self._polling_final = 0.0
        self.failure: str | None = None  # the engine's thread stopped on an error (epoll failing)

    # -- the Dispatcher's part -----------------------------------------------------------------
    def start(self) -> None:
        if self.users is None:
            self.engine.start_open(self.times)
        else:
            self.engine.start_closed(self.times, *self.users)
        # The engine thread inherited this thread's nice value; from now on this thread only does
        # bookkeeping, which may wait: on a busy machine it must not take the CPU from the sends.
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), BOOKKEEPING_NICE)
        self._handle = self.loop.call_later(DRAIN_EVERY_S, self._tick)

    def stop(self) -> None:
        self.engine.stop_sending()
        if not self.finished.done():
            self.finished.set_result(None)

    # -- the HttpClient's part -----------------------------------------------------------------
    async def wait_idle(self) -> None:
        """Until every issued request has ended (drained once sending is over)."""
        fut = self.loop.create_future()
        self._idle_waiters.append(fut)
        self._check()
        await fut

    def abort_all(self) -> int:
        """Stop the engine; outstanding requests are dropped unreported (their lateness counts)."""
        dropped = int(self.engine.abort())
        with contextlib.suppress(OSError):  # a failed engine: its records were taken before it said so
            self.drain()
        self.outstanding = 0
        self._wake_idle()
        return dropped

    def close(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        if not self.engine.closed:
            self.abort_all()
            self._polling_final = self.engine.polling_seconds()
            self.engine.close()

    def polling_s(self) -> float:
        """CPU seconds the engine's thread spent spinning or polling for the next send, idle otherwise.

        The worker reports them (poll_cpu_s) and leaves them out of its busy fraction only: they are
        waiting (a timer expiry costs ~20 us on this VM, so a send due within 50 us is polled for),
        and counted in they would make every run above ~20k req/s look like a saturated worker
        (send_cpu_fraction ~1.0). Its CPU seconds (cpu_s) keep them: the machine paid for them."""
        return self.engine.polling_seconds() if not self.engine.closed else self._polling_final

    # -- draining ------------------------------------------------------------------------------
    def drain(self) -> tuple[bool, int]:
        """Hand what finished to the recorder; (sending done, outstanding) as of then."""
        data, issued, outstanding, sending_done, first, last = self.engine.drain()
        pods, ips = self._tables
        pods.extend(self.engine.strings(0, len(pods)))
        ips.extend(self.engine.strings(1, len(ips)))
        self.recorder.on_issued(issued, first, last)
        self.recorder.on_records(np.frombuffer(data, dtype=RECORD), pods, ips)
        self.outstanding = outstanding
        return sending_done, outstanding

    def _tick(self) -> None:
        self._handle = None
        if self.engine.closed or not self.engine.running:
            return
        self._check()
        self._handle = self.loop.call_later(DRAIN_EVERY_S, self._tick)

    def _check(self) -> None:
        if self.failure is not None:
            self._wake_idle()
            return
        try:
            sending_done, outstanding = self.drain()
        except OSError as exc:
            # What it recorded is kept (drain hands every record over before the error); the requests
            # still in flight are the abort count, so the run is marked incomplete, with a warning.
            self.failure = f"the native load client's thread stopped: {exc}"
            print(f"lbbench load worker: {self.failure}", file=sys.stderr)
            self.stop()
            self._wake_idle()
            return
        if sending_done and not self.finished.done():
            self.finished.set_result(None)
        if outstanding == 0 and (sending_done or self.finished.done()):
            self._wake_idle()

    def _wake_idle(self) -> None:
        waiters, self._idle_waiters = self._idle_waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)


def make_driver(spec_target: tuple[str, int], request: bytes, pool: int, connect_timeout_s: float,
                timeout_s: float, conn_id_base: int, conn_id_step: int,
                times: np.ndarray[Any, np.dtype[np.float64]], recorder: Recorder,
                users: tuple[float, float] | None = None) -> EngineDriver:
    """The engine for one worker: `times` are its sends (open loop), or with `users` = (end, think_s)
    its users' first sends (closed loop); `pool` 0 is close mode (a new connection per request)."""
    host, port = spec_target
    engine = _engine.Engine(resolve(host, port), port, request, pool, connect_timeout_s, timeout_s, conn_id_base,
                            conn_id_step)
    return EngineDriver(engine, times, recorder, users)

