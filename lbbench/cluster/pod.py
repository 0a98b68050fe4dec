"""The backend pod: a real aiohttp server on uvloop, one OS process per pod.

A pod has `slots` parallel service slots with one FIFO wait in front of them, so a pod with
slots=1 is an M/G/1 server. Each request's service time is drawn from the pod's model
(seeded). Responses say who served them and how long they queued and were served.

Fault knobs live in :class:`Faults` (set at start, changed at run time over the control
pipe) and per request as Fortio-style query parameters:
  ?status=503:10      answer 503 with 10% probability (several: status=503:10,429:5)
  ?delay=50ms:20      add 50 ms to the service time with 20% probability
  ?close=10           close the connection without a reply, 10% of requests
  ?hang=5             never answer, 5% of requests (until the client goes away)
  ?size=1024          response body of 1024 bytes
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import random
import signal
import time
from dataclasses import dataclass

import numpy as np
from aiohttp import web

from lbbench.model.faults import Faults
from lbbench.model.servicetime import ServiceTime, parse_duration
from lbbench.system.control import Message, attach_stdin_control
from lbbench.system.timer import PreciseTimer


@dataclass(frozen=True)
class PodSpec:
    name: str
    host: str
    port: int
    service: ServiceTime
    slots: int = 1
    burn_cpu: bool = False
    seed: int = 0
    faults: Faults = Faults()


class Slots:
    """`n` service slots with a strict FIFO wait queue in front of them."""

    def __init__(self, n: int) -> None:
        self.free = n
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    async def acquire(self) -> None:
        if self.free > 0 and not self._waiters:
            self.free -= 1
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.release()  # we were handed a slot but are going away
            else:
                self._waiters.remove(fut)
            raise

    def release(self) -> None:
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)  # hand the slot over directly: FIFO, no barging
                return
        self.free += 1


def _pick(spec: str, rng: random.Random) -> str | None:
    """Fortio-style 'VALUE:PERCENT,VALUE:PERCENT': return the chosen VALUE or None."""
    roll = rng.random() * 100.0
    acc = 0.0
    for part in spec.split(","):
        value, _, pct = part.partition(":")
        acc += float(pct) if pct else 100.0
        if roll < acc:
            return value
    return None


def _burn(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


class Pod:
    def __init__(self, spec: PodSpec) -> None:
        self.spec = spec
        self.faults = spec.faults
        self.slots = Slots(spec.slots)
        self.rng = np.random.default_rng(spec.seed)
        self.coin = random.Random(spec.seed ^ 0x5EED)
        self.in_flight = 0
        self.served = 0
        self.timer: PreciseTimer | None = None
        self.hanging: set[asyncio.Future[None]] = set()

    def on_control(self, msg: Message) -> None:
        if isinstance(msg.get("faults"), dict):
            self.faults = self.faults.updated(msg["faults"])

    async def healthz(self, request: web.Request) -> web.Response:
        # The pod's name goes with every answer: a readiness probe must know who answered it.
        headers = {"x-pod": self.spec.name}
        if self.faults.ready:
            return web.Response(text="ok\n", headers=headers)
        return web.Response(status=503, text="not ready\n", headers=headers)

    async def stats(self, request: web.Request) -> web.Response:
        return web.json_response(
            {"pod": self.spec.name, "in_flight": self.in_flight, "waiting": self.slots.waiting,
             "served": self.served, "faults": dataclasses.asdict(self.faults)}
        )

    async def handle(self, request: web.Request) -> web.StreamResponse:
        arrived = time.monotonic()
        q = request.query
        faults = self.faults
        if self.coin.random() < faults.close_rate or ("close" in q and _pick("1:" + q["close"], self.coin)):
            if request.transport is not None:
                request.transport.abort()
            raise web.HTTPBadRequest()  # never reaches the client: the socket is gone
        if self.coin.random() < faults.hang_rate or ("hang" in q and _pick("1:" + q["hang"], self.coin)):
            await self._hang()
        self.in_flight += 1
        try:
            await self.slots.acquire()
            started = time.monotonic()
            try:
                service_s = self.spec.service.sample(self.rng) * faults.slow_factor
                if "delay" in q:
                    extra = _pick(q["delay"], self.coin)
                    service_s += parse_duration(extra, unit_required=False) if extra else 0.0
                await self._serve(service_s)
            finally:
                self.slots.release()
            done = time.monotonic()
        finally:
            self.in_flight -= 1
        self.served += 1
        status = 200
        if self.coin.random() < faults.error_rate:
            status = 503
        elif "status" in q:
            status = int(_pick(q["status"], self.coin) or 200)
        size = int(q.get("size", "3"))
        body = b"ok\n" if size == 3 else b"x" * size
        headers = {
            "x-pod": self.spec.name,
            "x-pod-ip": self.spec.host,
            "x-queue-ms": f"{(started - arrived) * 1e3:.3f}",
            "x-service-ms": f"{(done - started) * 1e3:.3f}",
        }
        return web.Response(status=status, body=body, headers=headers, content_type="text/plain")

    async def _serve(self, service_s: float) -> None:
        if self.spec.burn_cpu:
            _burn(service_s)
        elif service_s > 0:
            assert self.timer is not None
            await self.timer.sleep(service_s)

    async def _hang(self) -> None:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.hanging.add(fut)
        try:
            await fut
        finally:
            self.hanging.discard(fut)

    def make_app(self) -> web.Application:
        app = web.Application(handler_args={"keepalive_timeout": 75.0})
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/_lbbench/stats", self.stats)
        app.router.add_route("*", "/{tail:.*}", self.handle)
        return app


async def serve_pod(spec: PodSpec, *, control: bool = True) -> None:
    """Run one pod until SIGTERM (graceful: finish in-flight) or SIGKILL (gone at once)."""
    loop = asyncio.get_running_loop()
    pod = Pod(spec)
    pod.timer = PreciseTimer(loop)
    if control:
        attach_stdin_control(loop, pod.on_control)
    runner = web.AppRunner(pod.make_app(), access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, spec.host, spec.port, backlog=1024, reuse_address=True)
    await site.start()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    for fut in list(pod.hanging):
        fut.cancel()
    # Graceful: stop accepting, let in-flight requests finish (aiohttp's shutdown_timeout).
    with contextlib.suppress(Exception):
        await runner.cleanup()
