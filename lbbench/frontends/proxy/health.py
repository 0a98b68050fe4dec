"""Active health checks, as HAProxy's `check inter I fall F rise R`.

One small task per backend starts `GET <path>` on a fresh connection every `interval_s` (a
check that outlasts the interval delays the next one; checks never overlap); a 2xx or 3xx
within `timeout_s` passes. `fall` failed checks in a row mark the backend down, `rise` passed
ones bring it back (and end a passive ejection). Off the hot path, so streams are fine.

A check fails in one of two ways, as HAProxy's L4 and L7 check results: the backend could
not be reached (no connection: refused, unreachable, or no SYN-ACK within the timeout), or
it was reached and answered wrong or not in time. Only the first says that the requests in
flight there will never be answered (a dead or cut-off node); an unready pod still finishes
them. The pool acts on the difference (lbbench.frontends.proxy.queue).

Detection: a backend that dies just after a passed check is marked down at most
`interval + (fall - 1) x max(interval, timeout) + timeout` later, which is
`fall x interval + timeout` when the timeout is no longer than the interval.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from typing import TYPE_CHECKING, Literal

from lbbench.frontends.proxy.backend import Backend
from lbbench.model.proxy import HealthCheck

if TYPE_CHECKING:
    from lbbench.frontends.proxy.queue import ServicePool

Verdict = Literal["passed", "failed", "unreachable"]


async def probe(host: str, port: int, path: str, timeout_s: float) -> Verdict:
    """One check: passed (2xx or 3xx in time), failed (reached, but a wrong answer or none in time), unreachable."""
    request = (f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: lbbench-proxy-check\r\n"
               "Connection: close\r\n\r\n").encode()
    deadline = asyncio.get_running_loop().time() + timeout_s
    try:
        async with asyncio.timeout_at(deadline):
            reader, writer = await asyncio.open_connection(host, port)
    except (OSError, TimeoutError):
        return "unreachable"
    try:
        async with asyncio.timeout_at(deadline):
            try:
                writer.write(request)
                line = await reader.readline()
            finally:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
    except (OSError, TimeoutError, ValueError):
        return "failed"
    parts = line.split()
    ok = len(parts) >= 2 and parts[0].startswith(b"HTTP/1.") and parts[1][:1] in (b"2", b"3")
    return "passed" if ok else "failed"


class HealthChecker:
    def __init__(self, pool: ServicePool, check: HealthCheck, rng: random.Random) -> None:
        self.pool = pool
        self.check = check
        self.rng = rng
        self.tasks: dict[Backend, asyncio.Task[None]] = {}

    def start(self, b: Backend) -> None:
        if b not in self.tasks:
            self.tasks[b] = asyncio.get_running_loop().create_task(self._run(b))

    def stop(self, b: Backend) -> None:
        task = self.tasks.pop(b, None)
        if task is not None:
            task.cancel()

    async def _run(self, b: Backend) -> None:
        c = self.check
        loop = asyncio.get_running_loop()
        due = loop.time() + self.rng.uniform(0.0, c.interval_s)  # spread the checks of many backends
        host, port = b.addr
        while True:
            await asyncio.sleep(max(0.0, due - loop.time()))
            self.pool.health_result(b, await probe(host, port, c.path, c.timeout_s))
            # Checks start on a fixed beat (a late one does not push every later one back), so that
            # the detection time above holds; one that outlasted the beat is followed at once.
            due = max(due + c.interval_s, loop.time())
