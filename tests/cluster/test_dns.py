"""Cluster DNS: a real UDP server on loopback, queried with real packets."""

from __future__ import annotations

import asyncio
import socket

import dns.message
import dns.query
import dns.rcode
import pytest
import uvloop

from lbbench.cluster.dns import ClusterDns, NameNotFound, aresolve_a, resolve_a
from lbbench.cluster.standalone import fresh_ip
from lbbench.model.addresses import HostPort

WEB = "web.default.svc.cluster.local"


async def _server() -> tuple[ClusterDns, HostPort]:
    server = ClusterDns()
    addr = await server.start(HostPort(fresh_ip(), 0))
    return server, addr


def test_answers_a_records_with_ttl_and_nxdomain_otherwise() -> None:
    async def body() -> None:
        server, addr = await _server()
        try:
            assert addr.port != 0
            server.set_record(WEB, "127.96.0.10", ttl_s=7)
            assert await asyncio.to_thread(resolve_a, WEB, addr) == "127.96.0.10"
            # the raw answer: authoritative, with the TTL we set
            q = dns.message.make_query(WEB, "A")
            r = await asyncio.to_thread(dns.query.udp, q, addr.host, 1.0, addr.port)
            assert r.rcode() == dns.rcode.NOERROR and r.answer[0].ttl == 7
            with pytest.raises(NameNotFound, match="NXDOMAIN"):
                await asyncio.to_thread(resolve_a, "nope.default.svc.cluster.local", addr)
            # case and trailing dot do not matter (DNS names are case-insensitive)
            assert await asyncio.to_thread(resolve_a, "WEB.Default.svc.cluster.local.", addr) == "127.96.0.10"
            server.set_record(WEB, "127.96.0.11")  # replaced
            assert await asyncio.to_thread(resolve_a, WEB, addr) == "127.96.0.11"
            server.remove_record(WEB)
            with pytest.raises(NameNotFound):
                await asyncio.to_thread(resolve_a, WEB, addr)
            assert server.counters()["dns_nxdomain_total"] == 2
        finally:
            await server.stop()

    asyncio.run(body())


def test_a_headless_name_answers_every_pod_and_none_is_nxdomain() -> None:
    async def body() -> None:
        server, addr = await _server()
        try:
            pods = "web-pods.default.svc.cluster.local"
            server.set_records(pods, ("127.96.0.21", "127.96.0.22", "127.96.0.23"), ttl_s=0)
            r = await asyncio.to_thread(dns.query.udp, dns.message.make_query(pods, "A"), addr.host, 1.0, addr.port)
            assert sorted(str(a.address) for a in r.answer[0]) == ["127.96.0.21", "127.96.0.22", "127.96.0.23"]
            server.set_records(pods, ())  # no ready pod left: the name is gone, as in the cluster DNS
            with pytest.raises(NameNotFound, match="NXDOMAIN"):
                await asyncio.to_thread(resolve_a, pods, addr)
            with pytest.raises(ValueError, match=r"127\.0\.0\.0/8"):
                server.set_records(pods, ("127.96.0.21", "10.0.0.1"))
        finally:
            await server.stop()

    asyncio.run(body())


def test_other_types_of_a_known_name_get_an_empty_noerror() -> None:
    async def body() -> None:
        server, addr = await _server()
        try:
            server.set_record(WEB, "127.96.0.10")
            q = dns.message.make_query(WEB, "AAAA")
            r = await asyncio.to_thread(dns.query.udp, q, addr.host, 1.0, addr.port)
            assert r.rcode() == dns.rcode.NOERROR and r.answer == []
        finally:
            await server.stop()

    asyncio.run(body())


def test_async_resolution_on_uvloop_many_at_once() -> None:
    async def body() -> list[str]:
        server, addr = await _server()
        try:
            for i in range(20):
                server.set_record(f"svc{i}.default.svc.cluster.local", f"127.96.1.{i + 1}")
            return await asyncio.gather(*(aresolve_a(f"svc{i % 20}.default.svc.cluster.local", addr)
                                          for i in range(100)))
        finally:
            await server.stop()

    answers = uvloop.run(body())
    assert answers == [f"127.96.1.{i % 20 + 1}" for i in range(100)]


def test_garbage_is_ignored_and_the_server_keeps_answering() -> None:
    async def body() -> None:
        server, addr = await _server()
        try:
            server.set_record(WEB, "127.96.0.10")
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.sendto(b"\x00\x01not dns", (addr.host, addr.port))
            await asyncio.sleep(0.05)
            assert await aresolve_a(WEB, addr) == "127.96.0.10"
            assert server.counters()["dns_malformed_total"] == 1
        finally:
            await server.stop()

    asyncio.run(body())


def test_silent_server_times_out() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind((fresh_ip(), 0))
        host, port = silent.getsockname()
        with pytest.raises(TimeoutError):
            resolve_a(WEB, HostPort(host, port), timeout_s=0.2)
        with pytest.raises(TimeoutError):
            asyncio.run(aresolve_a(WEB, HostPort(host, port), timeout_s=0.2))


def test_loopback_only() -> None:
    server = ClusterDns()
    with pytest.raises(ValueError, match="loopback only"):
        server.set_record(WEB, "10.0.0.1")
    with pytest.raises(ValueError, match="loopback only"):
        asyncio.run(server.start(HostPort("0.0.0.0", 0)))
    with pytest.raises(ValueError, match="not a DNS name"):
        server.set_record("a..b", "127.0.0.1")
