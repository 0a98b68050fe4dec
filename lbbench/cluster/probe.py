"""Readiness probing as the kubelet does it: an HTTP GET that must answer 2xx in time.

Unlike the kubelet's, the probe also checks *who* answered: every pod names itself in an
``x-pod`` header. A process of another run (or anything else) holding the pod's address
answers for it otherwise, and a pod that never bound its port would be marked ready.
"""

from __future__ import annotations

import asyncio
import contextlib

_MAX_HEADERS = 100


async def http_probe(ip: str, port: int, path: str, timeout_s: float, expect_pod: str | None = None) -> bool:
    """True if GET `path` answers 200-399 within `timeout_s` (connection refused = False);
    with `expect_pod`, only if the answer's ``x-pod`` header names that pod."""
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(timeout_s):
            reader, writer = await asyncio.open_connection(ip, port)
            writer.write(f"GET {path} HTTP/1.1\r\nHost: {ip}\r\nConnection: close\r\n\r\n".encode())
            status = await reader.readline()
            pod = await _pod_header(reader) if expect_pod is not None else None
    except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError):
        return False
    finally:
        if writer is not None:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
    parts = status.split()
    ok = len(parts) >= 2 and parts[1][:1] in (b"2", b"3")
    return ok and (expect_pod is None or pod == expect_pod)


async def _pod_header(reader: asyncio.StreamReader) -> str | None:
    for _ in range(_MAX_HEADERS):
        line = await reader.readline()
        if line in (b"\r\n", b"\n", b""):
            return None
        name, sep, value = line.partition(b":")
        if sep and name.strip().lower() == b"x-pod":
            return value.strip().decode(errors="replace")
    return None
