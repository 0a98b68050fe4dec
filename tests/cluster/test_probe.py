"""Readiness probes over real sockets: a 2xx answer counts only when the probed pod gave it."""

from __future__ import annotations

import asyncio

import pytest
import uvloop

from lbbench.cluster.pod import Pod, PodSpec
from lbbench.cluster.probe import http_probe
from lbbench.model.servicetime import ServiceTime


async def _foreign_server(headers: bytes) -> tuple[asyncio.Server, int]:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\n" + headers + b"Content-Length: 3\r\nConnection: close\r\n\r\nok\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


@pytest.mark.parametrize("headers", [b"", b"x-pod: web-other\r\n", b"X-Pod-Name: web-0\r\n"],
                         ids=["no-name", "another-pod", "another-header"])
def test_a_foreign_answer_is_never_ready(headers: bytes) -> None:
    async def main() -> tuple[bool, bool]:
        server, port = await _foreign_server(headers)
        async with server:
            named = await http_probe("127.0.0.1", port, "/healthz", 2.0, expect_pod="web-0")
            anonymous = await http_probe("127.0.0.1", port, "/healthz", 2.0)
        return named, anonymous

    named, anonymous = uvloop.run(main())
    assert anonymous is True  # a 200 it is...
    assert named is False  # ...but not from the pod that was probed


def test_the_pod_names_itself_in_its_health_answer() -> None:
    from aiohttp import web

    async def main() -> tuple[bool, bool, bool]:
        pod = Pod(PodSpec("web-0", "127.0.0.1", 0, ServiceTime("const", 0.0)))
        runner = web.AppRunner(pod.make_app(), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        try:
            mine = await http_probe("127.0.0.1", port, "/healthz", 2.0, expect_pod="web-0")
            other = await http_probe("127.0.0.1", port, "/healthz", 2.0, expect_pod="web-1")
            pod.faults = pod.faults.updated({"ready": False})
            unready = await http_probe("127.0.0.1", port, "/healthz", 2.0, expect_pod="web-0")
        finally:
            await runner.cleanup()
        return mine, other, unready

    mine, other, unready = uvloop.run(main())
    assert (mine, other, unready) == (True, False, False)
