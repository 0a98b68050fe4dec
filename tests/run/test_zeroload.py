"""The zero-load probe, in process and from a separate (wrapped) process, against a real HTTP server."""

from __future__ import annotations

import asyncio

from lbbench.cluster.standalone import fresh_ip
from lbbench.model.addresses import HostPort
from lbbench.run.zeroload import measure_zero_load, measure_zero_load_in

ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Queue-Ms: 0.5\r\nX-Service-Ms: 1.5\r\n\r\nok"


async def _serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while await reader.readuntil(b"\r\n\r\n"):
        writer.write(ANSWER)
        await writer.drain()


async def _both(wrapped: list[list[str]]) -> tuple[dict[str, object], dict[str, object]]:
    server = await asyncio.start_server(lambda r, w: asyncio.ensure_future(_quiet(r, w)), fresh_ip(), 0)
    host, port = server.sockets[0].getsockname()[:2]
    addr = HostPort(host, port)
    try:
        here = await measure_zero_load(addr, "/", None, keepalive=True, n=10)

        def wrap(argv: list[str]) -> list[str]:
            wrapped.append(argv)
            return ["/bin/sh", "-c", 'exec "$@"', "sh", *argv]  # a wrapper that execs, as the cgroup one does

        there = await measure_zero_load_in(wrap, addr, "/", None, keepalive=True)
    finally:
        server.close()
        await server.wait_closed()
    return dict(here), dict(there)


async def _quiet(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        await _serve(reader, writer)
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


def test_probe_from_a_wrapped_process_reports_like_the_in_process_one() -> None:
    wrapped: list[list[str]] = []
    here, there = asyncio.run(_both(wrapped))
    assert len(wrapped) == 1 and wrapped[0][-1] == "keepalive"  # the probe process went through the wrapper
    assert here["failed"] == there["failed"] == 0
    assert there["requests"] == 40 and here["requests"] == 10
    for result in (here, there):  # latency minus the 2 ms the server said it spent
        assert isinstance(result["latency_p50_s"], float) and isinstance(result["overhead_p50_s"], float)
        assert result["overhead_p50_s"] < result["latency_p50_s"]
