"""The load generator: W worker processes, one seeded schedule, results merged exactly.

    gen = LoadGenerator(spec)
    await gen.prepare()            # optional: spawn the workers now (~0.3-1 s), then pick t=0
    await gen.start(start_at)      # spawn workers if needed, set them off at start_at (monotonic)
    gen.progress()                 # cumulative counters, from reports every ~250 ms
    gen.request_stop()             # optional abort: in-flight requests get <= 1 s
    result = await gen.result()    # rows (DataFrame), merged histogram, summary

Workers are `python -m lbbench.load.worker` children of a :class:`lbbench.system.procs.Supervisor`
(they die with this process). Each sends every W-th request of the one schedule; their raw
rows are concatenated and their histograms added, never their percentiles averaged.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from lbbench.load.histogram import LogHistogram
from lbbench.load.recorder import ERROR_TABLE
from lbbench.load.schedule import expected_requests, part_size, requested_rate
from lbbench.load.spec import LoadSpec
from lbbench.load.summary import LoadSummary, all_errors, latency_stats, saturation, short_stats
from lbbench.load.wire import FrameReader, Message
from lbbench.system import control
from lbbench.system.procs import Child, Supervisor

# Requests per second one worker sends with lateness p99 well under 2 ms on a busy 2-core
# machine (measured against nginx: keep-alive 12k req/s at p99 0.5 ms and 40% of a CPU, up to
# ~50k when quiet; close ~1.2k: a new connection per request costs ~200 us of CPU); auto mode
# sizes W from these.
RPS_PER_WORKER = {"close": 1500.0, "keepalive": 10000.0}
USERS_PER_WORKER = 64
READY_TIMEOUT_S = 60.0
RESULT_SLACK_S = 15.0

ROW_COLUMNS = ("intended_s", "sent_s", "done_s", "latency_s", "status", "error", "pod", "pod_ip", "conn_id",
               "new_conn", "worker", "queue_ms", "service_ms", "proxy_queue_ms", "proxy_upstream_ms")


def peak_rate(spec: LoadSpec) -> float:
    return max([spec.rate_rps, *(s.rate_rps for s in spec.steps)])


def resolve_workers(spec: LoadSpec, cpu_count: int | None = None) -> int:
    """How many worker processes: as asked, else enough for the rate, at most the CPU count."""
    cpus = cpu_count or os.cpu_count() or 1
    users = part_size(spec.closed_loop_users, spec)
    if spec.workers:
        n = spec.workers
    elif spec.closed_loop:
        n = min(cpus, math.ceil(users / USERS_PER_WORKER))
    else:
        n = min(cpus, math.ceil(peak_rate(spec) / spec.part_count / RPS_PER_WORKER[spec.connections.kind]))
    n = max(1, n)
    if spec.connections.kind == "keepalive" and n > spec.connections.pool:
        if spec.workers:
            raise ValueError(f"{n} workers but only {spec.connections.pool} keep-alive connections: "
                             "each worker needs at least one (use fewer workers or a bigger pool)")
        n = spec.connections.pool
    if spec.closed_loop and n > users:
        if spec.workers:
            raise ValueError(f"{n} workers but only {users} closed-loop users")
        n = max(1, users)
    return n


@dataclass(frozen=True)
class Progress:
    elapsed_s: float  # since start_at (negative before)
    issued: int
    done: int
    ok: int
    errors: dict[str, int]
    p99_last_s: float | None  # latency p99 of successful requests over the last ~1 s
    lateness_p99_last_s: float | None

    @property
    def in_flight(self) -> int:
        return self.issued - self.done


@dataclass(frozen=True, eq=False)
class LoadResult:
    """What a run produced. `rows` has one row per finished request, sorted by intended time:

    intended_s, sent_s, done_s  seconds from t=0 (start_at). sent_s is when the request's
                                first byte left: its SYN in close mode, its write on a pooled
                                connection in keepalive mode (so it includes any wait for a free
                                connection); NaN if it never left (timed out while waiting).
    latency_s                   done_s - intended_s, whatever the outcome
    status                      HTTP status, 0 if none; error: "" or one of client.ERROR_KINDS
    pod, pod_ip                 x-pod / x-pod-ip ("" if absent); queue_ms, service_ms: NaN if absent
    proxy_queue_ms              x-proxy-queue-ms / x-proxy-upstream-ms from lbbench's l7-proxy: time
    proxy_upstream_ms           in its central queue, and from dispatch to the backend's response
                                head (the time the request held the backend slot); NaN if absent
    conn_id, new_conn, worker   the TCP connection (unique in the run), whether this was its
                                first request, and the worker process that sent it

    Requests cut off by `request_stop()` are not in the rows (`summary.aborted` counts them).
    """

    rows: pd.DataFrame
    histogram: LogHistogram  # latency of successful requests
    summary: LoadSummary
    complete: bool
    worker_cpu_s: tuple[float, ...]
    lateness: LogHistogram = field(default_factory=LogHistogram)


class _Link:
    """The parent's end of one worker."""

    def __init__(self, index: int, child: Child) -> None:
        loop = asyncio.get_running_loop()
        self.index = index
        self.child = child
        self.ready: asyncio.Future[Message] = loop.create_future()
        self.result: asyncio.Future[Message | None] = loop.create_future()
        self.last: Message = {}
        self.recent: collections.deque[tuple[LogHistogram, LogHistogram]] = collections.deque(maxlen=4)
        self.reader = FrameReader(self._on_message, self._on_eof)

    async def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        pipe = self.child.popen.stdout
        assert pipe is not None
        reader = self.reader
        await loop.connect_read_pipe(lambda: reader, pipe)

    def _on_message(self, msg: Message) -> None:
        kind = msg.get("type")
        if kind == "ready" and not self.ready.done():
            self.ready.set_result(msg)
        elif kind == "progress":
            self.last = msg
            self.recent.append((LogHistogram.from_dict(msg["latency"]),
                                LogHistogram.from_dict(msg["lateness"])))
        elif kind == "result" and not self.result.done():
            self.result.set_result(msg)

    def _on_eof(self) -> None:
        if not self.ready.done():
            self.ready.set_exception(RuntimeError(f"load worker {self.index} exited before it was ready"))
        if not self.result.done():
            self.result.set_result(None)


class LoadGenerator:
    def __init__(self, spec: LoadSpec, wrap: Callable[[list[str]], list[str]] | None = None) -> None:
        """`wrap` turns a worker's argv into the one to spawn (e.g. joining a cgroup before any socket)."""
        self.spec = spec
        self.wrap = wrap
        self.workers = resolve_workers(spec)
        self._sup: Supervisor | None = None
        self._links: list[_Link] = []
        self._start_at: float | None = None
        self.start_at_unix: float | None = None
        self.notes: list[str] = []  # warnings for the summary (e.g. a late start)
        self._stop_sent = False
        self._closed = False

    async def prepare(self) -> None:
        """Spawn the workers and wait until each has built its share of the schedule."""
        if self._sup is not None:
            return
        loop = asyncio.get_running_loop()
        self._sup = Supervisor()
        try:
            for i in range(self.workers):
                argv = [sys.executable, "-m", "lbbench.load.worker"]
                child = self._sup.spawn(f"load-worker/{i}", self.wrap(argv) if self.wrap else argv,
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=None)
                link = _Link(i, child)
                await link.attach(loop)
                self._links.append(link)
                control.send(child.stdin, {"config": {"spec": self.spec.to_dict(), "worker": i,
                                                      "workers": self.workers}})
            await asyncio.wait_for(asyncio.gather(*(link.ready for link in self._links)), READY_TIMEOUT_S)
        except BaseException:
            await self.aclose()
            raise

    async def start(self, start_at: float) -> None:
        """Spawn the workers (if `prepare` was not called) and set them off at `start_at` (monotonic).

        Raises RuntimeError if the workers were not ready before `start_at` (a late start would
        make every early request late): call `prepare()` first, then choose `start_at`.
        """
        await self.prepare()
        now = time.monotonic()
        if now >= start_at:
            await self.aclose()
            raise RuntimeError(f"load workers were ready {now - start_at:.3f} s after start_at; "
                               "give them more time (they need ~1 s to start)")
        self._start_at = start_at
        self.start_at_unix = time.time() + (start_at - now)
        for link in self._links:
            control.send(link.child.stdin, {"go": start_at})

    def progress(self) -> Progress:
        issued = done = ok = 0
        errors: collections.Counter[str] = collections.Counter()
        lat, late = LogHistogram(), LogHistogram()
        for link in self._links:
            last = link.last
            issued += int(last.get("issued", 0))
            done += int(last.get("done", 0))
            ok += int(last.get("ok", 0))
            errors.update(last.get("errors", {}))
            for a, b in link.recent:
                lat.merge(a)
                late.merge(b)
        elapsed = time.monotonic() - self._start_at if self._start_at is not None else math.nan
        p99 = lat.quantile(0.99) if lat.count else None
        late99 = late.quantile(0.99) if late.count else None
        return Progress(elapsed, issued, done, ok, dict(errors), p99, late99)

    def request_stop(self) -> None:
        """Stop sending now; requests in flight get up to 1 s; workers then return what they have."""
        self._stop_sent = True
        for link in self._links:
            control.send(link.child.stdin, {"stop": True})

    async def result(self) -> LoadResult:
        """Wait for every worker's result (or its death), merge, summarise, and stop the workers."""
        if self._start_at is None:
            raise RuntimeError("result() before start()")
        spec = self.spec
        deadline = self._start_at + spec.duration_s + spec.timeout_s + RESULT_SLACK_S
        results: list[Message | None] = []
        try:
            for link in self._links:
                remaining = max(0.1, deadline - time.monotonic())
                try:
                    results.append(await asyncio.wait_for(asyncio.shield(link.result), remaining))
                except TimeoutError:
                    results.append(None)
        finally:
            await self.aclose()
        return merge_results(spec, self.workers, results, notes=self.notes, start_at_unix=self.start_at_unix)

    async def aclose(self) -> None:
        """Stop all workers (idempotent)."""
        if self._closed or self._sup is None:
            return
        self._closed = True
        await self._sup.aclose(grace_s=1.0)
        for link in self._links:
            if link.reader.transport is not None:
                link.reader.transport.close()
        await asyncio.sleep(0)


# -- merging ----------------------------------------------------------------------------------
def merge_results(spec: LoadSpec, workers: int, results: list[Message | None], *,
                  notes: Sequence[str] = (), start_at_unix: float | None = None) -> LoadResult:
    warnings: list[str] = list(notes)
    got = [r for r in results if r is not None and not r.get("never_started")]
    for i, r in enumerate(results):
        if r is None:
            warnings.append(f"load worker {i} died or hung without returning its results (requests missing)")
        elif r.get("failure"):
            warnings.append(f"load worker {i} stopped sending early: {r['failure']}")
    hist = {name: LogHistogram.merged(LogHistogram.from_dict(r[name]) for r in got)
            for name in ("latency", "lateness", "pool_wait", "pool_wait_own")}
    rows = merge_rows(got) if spec.record_rows else empty_rows()
    aborted = sum(int(r["aborted"]) for r in got)
    stopped = any(r.get("stopped") for r in results if r is not None)
    if aborted:
        warnings.append(f"{aborted} requests were still in flight when the run was stopped (not in the rows)")
    cpu_s = tuple(float(r["cpu_s"]) for r in got)
    cpu_frac = tuple(float(r["send_cpu_fraction"]) for r in got)
    complete = len(got) == workers and not stopped and not aborted
    summary = build_summary(spec, workers, got, hist, stopped, aborted, complete, warnings, cpu_s, cpu_frac)
    summary = dataclasses.replace(summary, start_at_unix=start_at_unix, part=f"{spec.part_index}/{spec.part_count}",
                                  worker_poll_cpu_s=tuple(float(r.get("poll_cpu_s", 0.0)) for r in got))
    return LoadResult(rows, hist["latency"], summary, complete, cpu_s, hist["lateness"])


def build_summary(spec: LoadSpec, workers: int, got: list[Message], hist: dict[str, LogHistogram],
                  stopped: bool, aborted: int, complete: bool, warnings: list[str],
                  cpu_s: tuple[float, ...], cpu_frac: tuple[float, ...]) -> LoadSummary:
    issued = sum(int(r["issued"]) for r in got)
    done = sum(int(r["done"]) for r in got)
    ok = sum(int(r["ok"]) for r in got)
    keepalive = spec.connections.kind == "keepalive"
    errors: collections.Counter[str] = collections.Counter()
    statuses: collections.Counter[str] = collections.Counter()
    for r in got:
        errors.update(r["errors"])
        statuses.update({str(k): v for k, v in r["statuses"].items()})
    send_end = max((float(r["send_end_s"]) for r in got), default=0.0)
    actual = send_end if stopped else max(spec.duration_s, send_end)
    reason = saturation(hist["lateness"], cpu_frac, spec.lateness_threshold_s)
    return LoadSummary(
        target=str(spec.target), path=spec.path, mode=spec.mode,
        arrivals=None if spec.closed_loop else spec.arrivals, connections=str(spec.connections),
        workers=workers, closed_loop_users=spec.closed_loop_users, think_time_s=spec.think_time_s,
        seed=spec.seed,
        requested_rps=None if spec.closed_loop else requested_rate(spec) / spec.part_count,
        achieved_rps=issued / actual if actual > 0 else 0.0, ok_rps=ok / actual if actual > 0 else 0.0,
        requested_duration_s=spec.duration_s, actual_duration_s=actual,
        scheduled=part_size(expected_requests(spec), spec), requests=issued, completed=done, ok=ok, failed=done - ok,
        ok_while_sending=sum(int(r["ok_while_sending"]) for r in got),
        aborted=aborted, errors=all_errors(errors), statuses=dict(sorted(statuses.items())),
        latency_s=latency_stats(hist["latency"]), lateness_s=short_stats(hist["lateness"]),
        pool_wait_s=short_stats(hist["pool_wait"]) if keepalive else None,
        pool_wait_own_s=short_stats(hist["pool_wait_own"]) if keepalive else None,
        worker_cpu_s=cpu_s, worker_cpu_fraction=cpu_frac, lateness_threshold_s=spec.lateness_threshold_s,
        generator_saturated=reason is not None, saturation_reason=reason, complete=complete, stopped=stopped,
        warnings=tuple(warnings),
    )


_PLAIN_COLUMNS = ("intended_s", "sent_s", "done_s", "status", "conn_id", "new_conn", "queue_ms", "service_ms",
                  "proxy_queue_ms", "proxy_upstream_ms")


def empty_rows() -> pd.DataFrame:
    return merge_rows([])


def merge_rows(results: list[Message]) -> pd.DataFrame:
    """Concatenate the workers' columns, decode the string codes, sort by intended time."""
    parts: dict[str, list[Any]] = {name: [] for name in ROW_COLUMNS}
    errors = np.array(ERROR_TABLE, dtype=object)
    for r in results:
        cols = r["columns"]
        n = len(cols["intended_s"])
        for name in _PLAIN_COLUMNS:
            parts[name].append(cols[name])
        parts["latency_s"].append(cols["done_s"] - cols["intended_s"])
        parts["error"].append(errors[cols["error"]])
        parts["pod"].append(np.array(cols["pod_table"], dtype=object)[cols["pod"]])
        parts["pod_ip"].append(np.array(cols["pod_ip_table"], dtype=object)[cols["pod_ip"]])
        parts["worker"].append(np.full(n, int(r["worker"]), dtype=np.int16))
    dtypes = {"intended_s": np.float64, "sent_s": np.float64, "done_s": np.float64, "latency_s": np.float64,
              "status": np.int16, "error": object, "pod": object, "pod_ip": object, "conn_id": np.int64,
              "new_conn": np.bool_, "worker": np.int16, "queue_ms": np.float64, "service_ms": np.float64,
              "proxy_queue_ms": np.float64, "proxy_upstream_ms": np.float64}
    data: dict[str, Any] = {}
    for name in ROW_COLUMNS:
        col = np.concatenate(parts[name]) if parts[name] else np.empty(0)
        data[name] = col.astype(dtypes[name], copy=False)
    df = pd.DataFrame(data)
    return df.sort_values("intended_s", kind="stable", ignore_index=True)


# -- one-shot, synchronous -----------------------------------------------------------------------
def run_load(spec: LoadSpec, start_at_unix: float | None = None) -> LoadResult:
    """Run `spec` to the end on a fresh uvloop loop; first Ctrl-C stops early, the second aborts.

    `start_at_unix`: t=0 on the wall clock (`time.time()`), so that several generators on
    several machines start one run together; by default, as soon as the workers are ready.
    """
    import uvloop

    return uvloop.run(_run_load(spec, start_at_unix))


def _monotonic_start(gen: LoadGenerator, start_at_unix: float | None) -> float:
    """t=0 on the monotonic clock: `start_at_unix` if still ahead, else right away (noted)."""
    soon = time.monotonic() + 0.1
    if start_at_unix is None:
        return soon
    at = time.monotonic() + (start_at_unix - time.time())
    if at < soon:
        gen.notes.append(f"started {soon - at:.3f} s after the requested start time (--start-at): "
                         "this part's t=0 is late against the others'")
        return soon
    return at


async def _run_load(spec: LoadSpec, start_at_unix: float | None) -> LoadResult:
    loop = asyncio.get_running_loop()
    gen = LoadGenerator(spec)
    main = asyncio.current_task()
    interrupts = 0

    def on_sigint() -> None:
        nonlocal interrupts
        interrupts += 1
        if interrupts == 1:
            print("lbbench load: stopping (Ctrl-C again to abort)", file=sys.stderr)
            gen.request_stop()
        elif main is not None:
            main.cancel()

    loop.add_signal_handler(signal.SIGINT, on_sigint)
    try:
        await gen.prepare()
        await gen.start(_monotonic_start(gen, start_at_unix))
        return await gen.result()
    except asyncio.CancelledError:
        raise KeyboardInterrupt from None
    finally:
        loop.remove_signal_handler(signal.SIGINT)
        with contextlib.suppress(Exception):
            await gen.aclose()
