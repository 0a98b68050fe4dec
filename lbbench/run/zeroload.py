"""The harness's own cost on each path, measured at zero load before the run's load starts.

A few sequential requests (one at a time, so nothing queues) through the front end, in the
run's connection mode. Latency minus the pod's reported queue and service time is what the
path itself costs: client, front end, network stack. The report shows it next to the models,
which know nothing of it. Its mean leaves out the slowest 5% of the probes: one SYN lost and
retransmitted after 1 s would otherwise add 25 ms of "overhead" to a 1 ms path (the maximum is kept).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import NamedTuple, TypedDict

from lbbench.model.addresses import HostPort, parse_hostport


class ZeroLoad(TypedDict):
    requests: int
    failed: int
    latency_p50_s: float | None
    overhead_mean_s: float | None  # latency - pod queue - pod service; mean of the fastest 95% (TRIM)
    overhead_p50_s: float | None
    overhead_max_s: float | None
    # latency - the proxy's slot time (x-proxy-upstream-ms): the path outside the M/M/c server of
    # a queueing proxy; None when the front end does not report it
    outside_proxy_slot_mean_s: float | None


TRIM = 0.05  # a lost SYN costs a 1 s retransmit: a loss, not the path's cost, and 1 of 40 would be 25 ms


def trimmed_mean(values: list[float], trim: float = TRIM) -> float | None:
    """The mean of the smallest (1 - trim) share of `values` (at least one value kept)."""
    if not values:
        return None
    keep = max(1, len(values) - int(len(values) * trim))
    return statistics.fmean(sorted(values)[:keep])


class _Timing(NamedTuple):
    latency_s: float
    pod_s: float  # the pod's queue + service time
    slot_s: float | None  # the proxy's slot time, if it says


async def _one(addr: HostPort, path: str, host: str, reuse: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None,
               keepalive: bool) -> tuple[_Timing, tuple[asyncio.StreamReader, asyncio.StreamWriter] | None]:
    """The request's timing, and the connection to reuse or None."""
    start = time.monotonic()
    reader, writer = reuse or await asyncio.open_connection(addr.host, addr.port)
    conn = "keep-alive" if keepalive else "close"
    writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: {conn}\r\n\r\n".encode())
    status = await reader.readline()
    headers: dict[str, str] = {}
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    await reader.readexactly(int(headers.get("content-length", "0")))
    latency = time.monotonic() - start
    if not status.split(b" ")[1:2] or not status.split(b" ")[1].startswith(b"2"):
        raise ConnectionError(f"status {status!r}")
    pod_s = (float(headers.get("x-queue-ms", "0")) + float(headers.get("x-service-ms", "0"))) / 1e3
    slot = headers.get("x-proxy-upstream-ms")
    timing = _Timing(latency, pod_s, float(slot) / 1e3 if slot is not None else None)
    if keepalive:
        return timing, (reader, writer)
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return timing, None


async def measure_zero_load(addr: HostPort, path: str, host_header: str | None, keepalive: bool,
                            n: int = 40, timeout_s: float = 5.0) -> ZeroLoad:
    latencies: list[float] = []
    overheads: list[float] = []
    outside_slot: list[float] = []
    failed = 0
    conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
    for _ in range(n):
        try:
            async with asyncio.timeout(timeout_s):
                timing, conn = await _one(addr, path, host_header or str(addr), conn, keepalive)
        except (OSError, TimeoutError, ValueError, asyncio.IncompleteReadError):
            failed += 1
            conn = None
            continue
        latencies.append(timing.latency_s)
        overheads.append(max(0.0, timing.latency_s - timing.pod_s))
        if timing.slot_s is not None:
            outside_slot.append(max(0.0, timing.latency_s - timing.slot_s))
    if conn is not None:
        conn[1].close()
        with contextlib.suppress(OSError):
            await conn[1].wait_closed()
    return ZeroLoad(
        requests=n, failed=failed,
        latency_p50_s=statistics.median(latencies) if latencies else None,
        overhead_mean_s=trimmed_mean(overheads),
        overhead_p50_s=statistics.median(overheads) if overheads else None,
        overhead_max_s=max(overheads, default=None),
        outside_proxy_slot_mean_s=trimmed_mean(outside_slot),
    )


async def measure_zero_load_in(wrap: Callable[[list[str]], list[str]], addr: HostPort, path: str,
                               host_header: str | None, keepalive: bool, timeout_s: float = 60.0) -> ZeroLoad:
    """The same probe from a separate process started through `wrap`.

    For a front end that serves only the clients it was told about (ebpf-socketlb balances
    the processes of the run's cgroup, and a socket's cgroup is its creator's), the probe
    must be such a client too. Its result comes back as one JSON document in a file.
    """
    from lbbench.system.procs import Supervisor

    with tempfile.TemporaryFile() as out:
        argv = [sys.executable, "-m", "lbbench.run.zeroload", str(addr), path, host_header or "",
                "keepalive" if keepalive else "close"]
        async with asyncio.timeout(timeout_s):
            sup = Supervisor()
            try:
                rc = await sup.spawn("zero-load", wrap(argv), stdin=subprocess.DEVNULL, stdout=out).wait()
            finally:
                await sup.aclose()
        out.seek(0)
        text = out.read().decode()
    if rc != 0:
        raise RuntimeError(f"the zero-load probe exited with status {rc}")
    result: ZeroLoad = json.loads(text)
    return result


def main(args: Sequence[str]) -> int:
    if len(args) != 4 or args[3] not in ("keepalive", "close"):
        print("usage: python -m lbbench.run.zeroload HOST:PORT PATH HOST_HEADER keepalive|close", file=sys.stderr)
        return 2
    result = asyncio.run(measure_zero_load(parse_hostport(args[0]), args[1], args[2] or None, args[3] == "keepalive"))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
