"""One load-generator worker process: `python -m lbbench.load.worker`, started by the parent.

Protocol. stdin (JSON lines, :mod:`lbbench.system.control`; EOF = parent gone = exit at once):
``{"config": {"spec": {...}, "worker": i, "workers": W}}``, then ``{"go": start_at}``, and
perhaps ``{"stop": true}``. stdout is a frame pipe (:mod:`lbbench.load.wire`): one
``ready``, ``progress`` every 250 ms, one ``result`` at the end.

Open loop: worker i sends requests i, i+W, i+2W, ... of the one seeded schedule, each at
its intended time (timerfd-precise, or on the event loop's next turn when it is due within
POLL_S of the last send) whatever happened to earlier ones. Closed loop: worker i
runs users i, i+W, ...; each sends, waits for the answer, thinks, and sends again.

Keep-alive load runs on the native client engine where it is built (lbbench.load.native:
its thread sends and reads, this process drains its records into the Recorder every 20 ms),
unless LBBENCH_PURE_CLIENT=1; close mode, and everything without the engine, runs on
HttpClient with the Dispatcher or Users below. Either way the messages are the same.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import math
import os
import resource
import signal
import sys
import time
from typing import TYPE_CHECKING, Any

import numpy as np

from lbbench.load.client import HttpClient, Request, build_request
from lbbench.load.recorder import Recorder
from lbbench.load.schedule import build_schedule, worker_share
from lbbench.load.spec import LoadSpec
from lbbench.load.wire import Message, PipeWriter
from lbbench.system.compiled import native_client
from lbbench.system.control import attach_stdin_control
from lbbench.system.timer import PreciseTimer

if TYPE_CHECKING:  # imported where the engine runs (lbbench.load.native needs the C extension)
    from lbbench.load.native import EngineDriver

PROGRESS_EVERY_S = 0.25
STOP_GRACE_S = 1.0  # after request_stop(), in-flight requests get this long


def wait_until(when: float) -> None:
    """Busy-wait the last few microseconds to `when`: never send before the intended time."""
    while time.monotonic() < when:
        pass


MIN_CPU_WINDOW_S = 1.0  # shortest sending time whose CPU fraction says whether the worker was saturated


def cpu_seconds() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def closed_loop_offsets(spec: LoadSpec) -> np.ndarray[Any, np.dtype[np.float64]]:
    """Start offsets of the closed-loop users: spread over max(think time, 10 ms), seeded."""
    rng = np.random.default_rng(spec.seed)
    return np.sort(rng.uniform(0.0, max(spec.think_time_s, 0.01), spec.closed_loop_users))


# Busy-waiting for a send costs CPU; a late wake-up costs precision (lateness, recorded).
# The dispatcher's timer aims ahead of a send by the median wake-up latency (tracked: one
# small step up after a late wake-up, one down after an early one), but never further ahead
# than SPIN_BUDGET of the mean gap between sends: at 500 req/s that allows 100 us (sends on
# time), at 20k req/s 2.5 us (wake-ups are late by their latency, and nothing spins).
SPIN_BUDGET = 0.05
AIM_STEP_S = 1e-6
RATE_WINDOW = 32  # sends over which the mean gap is taken
USER_SPIN_MAX_S = 2e-5  # closed loop: busy-wait at most this long for a user's send, else poll
# A send due within POLL_S of the last one is waited for by running the event loop (call_soon:
# a non-blocking epoll per turn, responses handled meanwhile), not by sleeping on the timer. On
# this 2-core VM a timer expiry costs ~20 us (a timerfd armed 20 us ahead: 24.7 us a round trip,
# 3.7 us armed 1 ms ahead and never expiring), and timerfd_settime was 16% of a worker's profile
# at 40-65k req/s. Measured at 50k req/s: 18.4 -> 16.8 us of worker CPU per request (3 runs each);
# at 5k req/s no change (37.3 us), the gaps being mostly longer.
POLL_S = 2e-5


class Dispatcher:
    """Open loop: issues each request at its intended time, never waiting for earlier ones.

    Never early: a request leaves only once `time.monotonic()` has reached its intended
    time. Everything due at a wake-up goes out in one batch; a send due within `aim_lead_s`
    is busy-waited for, and one due within POLL_S is waited for on the event loop's next turn
    instead of the timer. Aiming at the mean wake-up latency and spinning through the rest
    whatever the rate, as before, had cost ~40% of a worker's CPU at 15k req/s, and far
    more on a busy machine (where wake-ups come late and scattered).
    """

    def __init__(self, timer: PreciseTimer, times: list[float], client: HttpClient,
                 recorder: Recorder) -> None:
        self.timer = timer
        self.times = times
        self.client = client
        self.recorder = recorder
        self.next = 0
        self.stopped = False
        self.aim_lead_s = 0.0  # how far ahead of the next send the timer was aimed
        self.median_lead_s = 0.0  # the tracked median wake-up latency
        self._aimed_at = math.nan
        self.loop = asyncio.get_running_loop()
        self.finished: asyncio.Future[None] = self.loop.create_future()

    def start(self) -> None:
        self._send_due()

    def stop(self) -> None:
        self.stopped = True
        self._settle()

    def _wake(self) -> None:
        """The timer's callback: track the median wake-up latency, then send what is due."""
        lead = self.median_lead_s + (AIM_STEP_S if time.monotonic() > self._aimed_at else -AIM_STEP_S)
        self.median_lead_s = lead if lead > 0.0 else 0.0
        self._send_due()

    def _send_due(self) -> None:
        if self.stopped:
            return
        times, i, n = self.times, self.next, len(self.times)
        issue, on_issue = self.client.issue, self.recorder.on_issue
        now = time.monotonic()
        while i < n:
            when = times[i]
            if when > now:
                if when - now > self.aim_lead_s:
                    break
                wait_until(when)
            req = issue(when)
            on_issue(req)
            now = req.issued
            i += 1
        self.next = i
        if i >= n:
            self._settle()
            return
        if times[i] - now < POLL_S:
            self.loop.call_soon(self._send_due)  # the one continuation, as the timer's would be
            return
        ahead = times[i + RATE_WINDOW if i + RATE_WINDOW < n else n - 1] - times[i - 1 if i else 0]
        budget = SPIN_BUDGET * ahead / RATE_WINDOW
        self.aim_lead_s = self.median_lead_s if self.median_lead_s < budget else budget
        self._aimed_at = times[i] - self.aim_lead_s
        # the timer runs a callback up to its own (mean) wake-up lead early: ask for that much later
        self.timer.call_at(self._aimed_at + self.timer.lead_s, self._wake)

    def _settle(self) -> None:
        if not self.finished.done():
            self.finished.set_result(None)


class Users:
    """Closed loop: each user sends, waits for the answer, thinks `think_s`, and sends again.

    With no think time a user's next request goes out from its response's callback, so it
    takes the connection that response just freed, without a trip through the timer.
    """

    def __init__(self, timer: PreciseTimer, starts: list[float], end: float, think_s: float,
                 client: HttpClient, recorder: Recorder) -> None:
        self.timer = timer
        self.starts = starts
        self.end = end
        self.think_s = think_s
        self.client = client
        self.recorder = recorder
        self.stopped = False
        self.loop = asyncio.get_running_loop()

    def start(self) -> None:
        for user, at in enumerate(self.starts):
            self._schedule(user, at)

    def stop(self) -> None:
        self.stopped = True

    def on_done(self, req: Request) -> None:
        at = req.done + self.think_s
        if self.think_s <= 0.0 and not self.stopped and at < self.end:
            self.recorder.on_issue(self.client.issue(at, req.tag))  # `at` has passed: not early
        else:
            self._schedule(req.tag, at)

    def _schedule(self, user: int, at: float) -> None:
        if not self.stopped and at < self.end:
            self.timer.call_at(at, functools.partial(self._send, user, at))

    def _send(self, user: int, at: float) -> None:
        if self.stopped:
            return
        if at - time.monotonic() > USER_SPIN_MAX_S:  # the timer woke up early: poll on the next loop turn
            self.loop.call_soon(self._send, user, at)
            return
        wait_until(at)
        self.recorder.on_issue(self.client.issue(at, user))


class Worker:
    def __init__(self, config: dict[str, Any], out: PipeWriter) -> None:
        self.spec = LoadSpec.from_dict(config["spec"])
        self.index = int(config["worker"])
        self.count = int(config["workers"])
        self.out = out
        self.loop = asyncio.get_running_loop()
        self.stop_requested = asyncio.Event()
        self.recorder: Recorder | None = None
        self.users: Users | None = None
        self._report_handle: asyncio.TimerHandle | None = None
        self._client_ref: HttpClient | EngineDriver | None = None

    def _share(self) -> np.ndarray[Any, np.dtype[np.float64]]:
        """This worker's requests (or users): its share of this process's part of the schedule."""
        spec = self.spec
        whole = closed_loop_offsets(spec) if spec.closed_loop else build_schedule(spec)
        part = worker_share(whole, spec.part_index, spec.part_count)
        return worker_share(part, self.index, self.count)

    def _on_done(self, req: Request) -> None:
        assert self.recorder is not None
        self.recorder.on_done(req)
        if self.users is not None:
            self.users.on_done(req)

    def _pool(self) -> int:
        """K connections in total, split across the workers (0 in close mode)."""
        mode = self.spec.connections
        if mode.kind != "keepalive":
            return 0
        return mode.pool // self.count + (1 if self.index < mode.pool % self.count else 0)

    def _client(self) -> HttpClient:
        spec, mode = self.spec, self.spec.connections
        pool = self._pool()
        # open loop: straight to the recorder; closed loop: the users hear of it too
        on_done = self._on_done if spec.closed_loop or self.recorder is None else self.recorder.on_done
        return HttpClient(
            spec.target, build_request(spec.path, spec.host, close=mode.kind == "close"), mode, on_done,
            pool_size=pool, connect_timeout_s=spec.connect_timeout_s, timeout_s=spec.timeout_s,
            conn_id_base=self.index, conn_id_step=self.count,
        )

    async def run(self, inbox: asyncio.Queue[Message]) -> None:
        share = self._share()
        # Everything alive now (modules, the schedule) lives for the whole run: keep the
        # collector from walking it again and again while requests are being timed.
        gc.collect()
        gc.freeze()
        self.out.send({"type": "ready", "worker": self.index, "share": len(share), "pid": os.getpid()})
        msg = await inbox.get()
        if "go" not in msg:
            self.out.finish({"type": "result", "worker": self.index, "stopped": True, "never_started": True})
            return
        start_at = float(msg["go"])
        watcher = self.loop.create_task(self._watch(inbox))
        try:
            await self._run(share, start_at)
        finally:
            watcher.cancel()

    async def _watch(self, inbox: asyncio.Queue[Message]) -> None:
        while True:
            if (await inbox.get()).get("stop"):
                self.stop_requested.set()

    async def _run(self, share: np.ndarray[Any, np.dtype[np.float64]], start_at: float) -> None:
        spec = self.spec
        timer = PreciseTimer(self.loop)
        recorder = self.recorder = Recorder(start_at, spec.record_rows, spec.duration_s)
        driver: Dispatcher | Users | EngineDriver
        client: HttpClient | EngineDriver
        if self._native():
            driver = client = self._engine(share + start_at, start_at, recorder)
            await self._run_with(timer, driver, client, recorder, start_at)
            return
        client = self._client()
        starts = (share + start_at).tolist()
        if spec.closed_loop:
            end = start_at + spec.duration_s
            driver = self.users = Users(timer, starts, end, spec.think_time_s, client, recorder)
        else:
            driver = Dispatcher(timer, starts, client, recorder)
        await self._run_with(timer, driver, client, recorder, start_at)

    def _native(self) -> bool:
        """The load runs on the C engine where it is built (and not turned off), in either mode."""
        return native_client()

    def _engine(self, times: np.ndarray[Any, np.dtype[np.float64]], start_at: float,
                recorder: Recorder) -> EngineDriver:
        from lbbench.load.native import make_driver

        spec = self.spec
        users = (start_at + spec.duration_s, spec.think_time_s) if spec.closed_loop else None
        close = spec.connections.kind != "keepalive"  # pool 0: a new connection per request
        return make_driver((spec.target.host, spec.target.port), build_request(spec.path, spec.host, close=close),
                           self._pool(), spec.connect_timeout_s, spec.timeout_s, self.index, self.count, times,
                           recorder, users)

    async def _run_with(self, timer: PreciseTimer, driver: Dispatcher | Users | EngineDriver,
                        client: HttpClient | EngineDriver, recorder: Recorder, start_at: float) -> None:
        self._report_handle = self.loop.call_later(PROGRESS_EVERY_S, self._report, recorder)
        try:
            await self._drive(timer, driver, client, recorder, start_at)
        finally:
            if self._report_handle is not None:
                self._report_handle.cancel()
            client.close()
            timer.close()
            await asyncio.sleep(0)  # let aborted transports run connection_lost

    async def _drive(self, timer: PreciseTimer, driver: Dispatcher | Users | EngineDriver,
                     client: HttpClient | EngineDriver, recorder: Recorder, start_at: float) -> None:
        spec = self.spec
        await timer.sleep_until(start_at)
        self._client_ref = client
        cpu0, t0 = self._cpu(), time.monotonic()
        driver.start()
        if isinstance(driver, Users):
            sending: asyncio.Future[Any] = timer.sleep_until(start_at + spec.duration_s)
        else:
            sending = driver.finished
        stopped = await self._until_stop(sending)
        failure = getattr(client, "failure", None)  # the native engine's thread stopped on an error
        stopped = stopped or failure is not None  # the schedule was cut short: the run is incomplete
        driver.stop()
        cpu1, t1 = self._cpu(), time.monotonic()
        drained = self.loop.create_task(client.wait_idle())
        if not stopped:
            stopped = await self._until_stop(drained)
        if stopped:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(drained), STOP_GRACE_S)
        aborted = client.abort_all()
        drained.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await drained
        cpu2, t2 = self._cpu(), time.monotonic()
        result = self._result(recorder, start_at, stopped, aborted, (cpu0, cpu1, cpu2), (t0, t1, t2))
        self.out.finish({**result, "failure": getattr(client, "failure", None)})

    def _cpu(self) -> tuple[float, float]:
        """This process's CPU seconds as the OS counts them (all threads), and the part of them the
        native engine spent polling for its next send (see EngineDriver.polling_s). Both are
        reported; only the rest, the work, says whether the worker was saturated: the polling is
        waiting (busy, because a timer expiry costs ~20 us here), but it is still CPU taken from
        whatever else runs on the machine, so the totals keep it."""
        client = self._client_ref
        return cpu_seconds(), 0.0 if client is None or isinstance(client, HttpClient) else client.polling_s()

    async def _until_stop(self, fut: asyncio.Future[Any]) -> bool:
        """Wait for `fut`; True if a stop request came first."""
        stop = self.loop.create_task(self.stop_requested.wait())
        try:
            await asyncio.wait({fut, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
        return self.stop_requested.is_set() and not fut.done()

    def _report(self, recorder: Recorder) -> None:
        latency, lateness = recorder.take_interval()
        msg = {"type": "progress", "worker": self.index, "t": time.monotonic(), "cpu_s": self._cpu()[0],
               **recorder.counters(), "latency": latency.to_dict(), "lateness": lateness.to_dict()}
        self.out.send(msg, droppable=True)
        self._report_handle = self.loop.call_later(PROGRESS_EVERY_S, self._report, recorder)

    def _result(self, rec: Recorder, start_at: float, stopped: bool, aborted: int,
                cpu_poll: tuple[tuple[float, float], ...], wall: tuple[float, float, float]) -> Message:
        send_wall = wall[1] - wall[0]
        cpu = [c for c, _ in cpu_poll]
        poll = [p for _, p in cpu_poll]
        send_busy = (cpu[1] - cpu[0]) - (poll[1] - poll[0])
        return {
            "type": "result", "worker": self.index, "stopped": stopped, "aborted": aborted,
            **rec.counters(), "statuses": dict(rec.statuses),
            "latency": rec.latency.to_dict(), "lateness": rec.lateness.to_dict(),
            "pool_wait": rec.pool_wait.to_dict(), "pool_wait_own": rec.pool_wait_own.to_dict(),
            "first_issue_s": rec.first_issue - start_at, "last_issue_s": rec.last_issue - start_at,
            # the native engine's thread may issue a request or two after the stop was asked for and
            # `wall[1]` taken: the sending ran until its last issue (a row intended after the end, once)
            "send_end_s": (max(wall[1], rec.last_issue) if rec.issued else wall[1]) - start_at,
            "cpu_s": cpu[2] - cpu[0], "send_cpu_s": cpu[1] - cpu[0], "poll_cpu_s": poll[2] - poll[0],
            # the busy fraction (polling left out); over less than a second of sending (a Ctrl-C soon
            # after the start) it is the rusage clock's granularity and the stop's own work: not judged
            "send_cpu_fraction": send_busy / send_wall if send_wall >= MIN_CPU_WINDOW_S else math.nan,
            "columns": rec.columns() if rec.record_rows else None,
        }


async def _main(data_fd: int) -> None:
    loop = asyncio.get_running_loop()
    inbox: asyncio.Queue[Message] = asyncio.Queue()
    if not attach_stdin_control(loop, inbox.put_nowait):
        raise SystemExit("lbbench.load.worker is started by lbbench's load generator, not by hand")
    out = PipeWriter(loop, data_fd)
    first = await inbox.get()
    worker = Worker(first["config"], out)
    await worker.run(inbox)


def main() -> None:
    from lbbench.system.procs import die_with_parent

    die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and sends "stop"
    data_fd = os.dup(1)
    os.dup2(2, 1)  # a stray print goes to stderr, never into the frame pipe
    sys.stdout = sys.stderr
    import uvloop

    uvloop.run(_main(data_fd))


if __name__ == "__main__":
    main()
