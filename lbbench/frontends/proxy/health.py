"""Active health checks, as HAProxy's `check inter I fall F rise R`.

One small task per backend sends `GET <path>` on a fresh connection every `interval_s`; a 2xx
or 3xx within `timeout_s` passes. `fall` failed checks in a row mark the backend down, `rise`
passed ones bring it back (and end a passive ejection). Off the hot path, so streams are fine.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from typing import TYPE_CHECKING

from lbbench.frontends.proxy.backend import Backend
from lbbench.model.proxy import HealthCheck

if TYPE_CHECKING:
    from lbbench.frontends.proxy.queue import ServicePool


async def probe(host: str, port: int, path: str, timeout_s: float) -> bool:
    """One check: True when the backend answers 2xx or 3xx in time."""
    request = (f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: lbbench-proxy-check\r\n"
               "Connection: close\r\n\r\n").encode()
    try:
        async with asyncio.timeout(timeout_s):
            reader, writer = await asyncio.open_connection(host, port)
            try:
                writer.write(request)
                line = await reader.readline()
            finally:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
    except (OSError, TimeoutError, ValueError):
        return False
    parts = line.split()
    return len(parts) >= 2 and parts[0].startswith(b"HTTP/1.") and parts[1][:1] in (b"2", b"3")


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
        await asyncio.sleep(self.rng.uniform(0.0, c.interval_s))  # spread the checks of many backends
        host, port = b.addr
        while True:
            ok = await probe(host, port, c.path, c.timeout_s)
            self.pool.health_result(b, ok)
            await asyncio.sleep(c.interval_s)
