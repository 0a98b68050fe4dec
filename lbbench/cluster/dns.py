"""Cluster DNS: a real UDP DNS server on loopback answering A records, with TTLs.

The notes' question "which IP do I give my client?" has Kubernetes' answer: a DNS name.
The controller registers ``<service>.<namespace>.svc.cluster.local -> ClusterIP`` and each
LoadBalancer's external name; a headless Service's name holds one A record per pod.
Clients (the load generator, the proxy's --backend-dns) resolve through this server.
Packets are encoded and decoded with dnspython; the server is an asyncio DatagramProtocol.
Unknown names get NXDOMAIN; a known name asked for another type gets an empty NOERROR
(so an AAAA lookup does not make a resolver give up on the A record).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import cast

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

from lbbench.model.addresses import HostPort, require_loopback


class NameNotFound(LookupError):
    """The server answered NXDOMAIN (or no A record)."""


@dataclass(frozen=True)
class Record:
    ips: tuple[str, ...]  # one for a Service's ClusterIP; every ready pod's for a headless Service
    ttl_s: int


def _key(name: str) -> dns.name.Name:
    try:
        return dns.name.from_text(name.strip().lower())
    except dns.exception.DNSException as e:
        raise ValueError(f"not a DNS name: {name!r} ({e})") from None


class _Server(asyncio.DatagramProtocol):
    def __init__(self, owner: ClusterDns) -> None:
        self.owner = owner
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | int, int]) -> None:
        try:
            query = dns.message.from_wire(data)
        except dns.exception.DNSException:
            self.owner.malformed += 1
            return  # not a DNS query: nothing sensible to answer
        if self.transport is not None:
            self.transport.sendto(self.owner.answer(query).to_wire(), addr)


class ClusterDns:
    """A records for Service names, served over UDP on a loopback address."""

    def __init__(self) -> None:
        self.records: dict[dns.name.Name, Record] = {}
        self.queries = 0
        self.nxdomain = 0
        self.malformed = 0
        self._transport: asyncio.DatagramTransport | None = None
        self.addr: HostPort | None = None

    async def start(self, addr: HostPort) -> HostPort:
        """Bind (port 0: any free port) and return the bound address."""
        require_loopback(addr.host, "DNS listen address")
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _Server(self), local_addr=(addr.host, addr.port))
        self._transport = transport
        host, port = transport.get_extra_info("sockname")[:2]
        self.addr = HostPort(host, port)
        return self.addr

    def set_record(self, name: str, ip: str, ttl_s: int = 5) -> None:
        self.set_records(name, (ip,), ttl_s)

    def set_records(self, name: str, ips: tuple[str, ...], ttl_s: int = 5) -> None:
        """Several A records under one name, as a headless Service has; none: the name is gone (NXDOMAIN)."""
        if ttl_s < 0:
            raise ValueError(f"TTL must be >= 0, got {ttl_s}")
        if not ips:
            self.remove_record(name)
            return
        checked = tuple(require_loopback(ip, f"A record for {name}") for ip in ips)
        self.records[_key(name)] = Record(checked, int(ttl_s))

    def remove_record(self, name: str) -> None:
        self.records.pop(_key(name), None)

    def answer(self, query: dns.message.Message) -> dns.message.Message:
        self.queries += 1
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        if len(query.question) != 1:
            response.set_rcode(dns.rcode.FORMERR)
            return response
        question = query.question[0]
        record = self.records.get(question.name)
        if record is None or question.rdclass != dns.rdataclass.IN:
            self.nxdomain += 1
            response.set_rcode(dns.rcode.NXDOMAIN)
        elif question.rdtype == dns.rdatatype.A:
            response.answer.append(dns.rrset.from_text(question.name, record.ttl_s, "IN", "A", *record.ips))
        return response

    def counters(self) -> dict[str, float]:
        return {"dns_queries_total": self.queries, "dns_nxdomain_total": self.nxdomain,
                "dns_malformed_total": self.malformed}

    async def stop(self) -> None:
        transport, self._transport = self._transport, None
        if transport is not None:
            transport.close()
            await asyncio.sleep(0)  # let the transport finish closing on this loop


def _first_a(name: str, response: dns.message.Message) -> str:
    if response.rcode() == dns.rcode.NXDOMAIN:
        raise NameNotFound(f"{name}: no such name (NXDOMAIN)")
    if response.rcode() != dns.rcode.NOERROR:
        raise NameNotFound(f"{name}: DNS error {dns.rcode.to_text(response.rcode())}")
    for rrset in response.answer:
        if rrset.rdtype == dns.rdatatype.A:
            for rdata in rrset:
                return str(rdata.address)
    raise NameNotFound(f"{name}: no A record")


def resolve_a(name: str, server: HostPort, timeout_s: float = 1.0) -> str:
    """Ask `server` for the A record of `name` (blocking). Raises NameNotFound or TimeoutError."""
    query = dns.message.make_query(name, dns.rdatatype.A)
    try:
        response = dns.query.udp(query, server.host, timeout=timeout_s, port=server.port)
    except dns.exception.Timeout:
        raise TimeoutError(f"DNS server {server} did not answer for {name} within {timeout_s}s") from None
    return _first_a(name, response)


async def aresolve_a(name: str, server: HostPort, timeout_s: float = 1.0) -> str:
    """Async :func:`resolve_a` (any asyncio loop, uvloop included)."""
    import dns.asyncquery

    query = dns.message.make_query(name, dns.rdatatype.A)
    try:
        response = await dns.asyncquery.udp(query, server.host, timeout=timeout_s, port=server.port)
    except dns.exception.Timeout:
        raise TimeoutError(f"DNS server {server} did not answer for {name} within {timeout_s}s") from None
    return _first_a(name, response)
