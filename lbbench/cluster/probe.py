"""Readiness probing as the kubelet does it: an HTTP GET that must answer 2xx in time."""

from __future__ import annotations

import asyncio
import contextlib


async def http_probe(ip: str, port: int, path: str, timeout_s: float) -> bool:
    """True if GET `path` answers 200-399 within `timeout_s` (connection refused = False)."""
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(timeout_s):
            reader, writer = await asyncio.open_connection(ip, port)
            writer.write(f"GET {path} HTTP/1.1\r\nHost: {ip}\r\nConnection: close\r\n\r\n".encode())
            line = await reader.readline()
    except (OSError, TimeoutError, asyncio.IncompleteReadError):
        return False
    finally:
        if writer is not None:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
    parts = line.split()
    return len(parts) >= 2 and parts[1][:1] in (b"2", b"3")
