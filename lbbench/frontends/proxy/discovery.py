"""Endpoint discovery through DNS: a headless Service's A records as the proxy's Endpoints.

On a real cluster `lbbench serve proxy --backend-dns NAME:PORT` has no controller feeding it
Endpoints over a control pipe; the cluster DNS answers a headless Service's name with the IP of
every ready pod instead. Every `--resolve-every` seconds the proxy asks again and hands the answer
to `ServicePool.set_endpoints`, the very path the local controller's updates take: new pods start
taking requests, removed ones drain (requests in flight finish; nothing is dropped).

DNS is the dependency-free baseline. It cannot tell terminating pods from gone ones and lags by
the DNS TTL and cache; a watch of EndpointSlices (readiness, `terminating`) would not (NOTES.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import dns.asyncresolver

# dnspython is imported where a name is resolved, not at module level: every `lbbench` command builds the
# `serve proxy` parser, which reads this module's settings, and a pod must not pay ~0.5 s to start for it

from lbbench.model.addresses import HostPort, require_loopback
from lbbench.model.service import Endpoint


@dataclass(frozen=True)
class BackendDns:
    """`--backend-dns NAME:PORT`: the headless Service's name and the pods' target port."""

    name: str
    port: int

    def __str__(self) -> str:
        return f"{self.name}:{self.port}"


@dataclass(frozen=True)
class DiscoverySettings:
    """Where the proxy's one Service finds its pods, and how often it asks."""

    target: BackendDns
    every_s: float = 1.0
    server: HostPort | None = None  # None: the system resolver
    allow_remote: bool = False  # pod IPs outside 127.0.0.0/8 (only on a real cluster)


def parse_backend_dns(text: str) -> BackendDns:
    name, sep, port_s = text.rpartition(":")
    if not sep or not name or not port_s.isdigit() or not 0 < int(port_s) < 65536:
        raise ValueError(f"--backend-dns expects NAME:PORT (e.g. web-pods.ns.svc.cluster.local:8080), got {text!r}")
    try:
        import dns.exception
        import dns.name

        dns.name.from_text(name)
    except dns.exception.DNSException as e:
        raise ValueError(f"--backend-dns: {name!r} is not a DNS name ({e})") from None
    return BackendDns(name.lower().rstrip("."), int(port_s))


def make_resolver(server: HostPort | None, timeout_s: float) -> dns.asyncresolver.Resolver:
    """The system's resolver (/etc/resolv.conf, as in a pod), or one DNS server (`--dns`, lbbench's own)."""
    import dns.asyncresolver

    resolver = dns.asyncresolver.Resolver(configure=server is None)
    if server is not None:
        resolver.nameservers = [server.host]
        resolver.port = server.port
    resolver.lifetime = timeout_s
    resolver.cache = None  # each round must see the cluster's current answer
    return resolver


async def resolve_endpoints(target: BackendDns, resolver: dns.asyncresolver.Resolver, *,
                            allow_remote: bool) -> tuple[Endpoint, ...]:
    """Every A record of `target.name` as an Endpoint (sorted by IP); none when the name has no pods.

    A headless Service without ready pods has no A record (NXDOMAIN or an empty answer): that is an
    empty Endpoints, not an error. A timeout or a server failure raises (the caller keeps what it had).
    """
    import dns.rdatatype
    import dns.resolver

    try:
        answer = await resolver.resolve(target.name, dns.rdatatype.A, search=False)
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
        return ()
    ips = sorted({str(r.address) for r in answer}, key=ipaddress.IPv4Address)
    if not allow_remote:
        for ip in ips:
            require_loopback(ip, f"{target.name} resolves to")
    return tuple(Endpoint(f"{ip}:{target.port}", ip, target.port) for ip in ips)


class DnsDiscovery:
    """Re-resolve the target every `every_s` and apply a changed answer through `apply` (set_endpoints)."""

    def __init__(self, settings: DiscoverySettings, apply: Callable[[tuple[Endpoint, ...]], None]) -> None:
        self.target = settings.target
        self.apply = apply
        self.every_s = settings.every_s
        # a round may take at most one period, so answers come in order and never pile up
        self.resolver = make_resolver(settings.server, min(max(settings.every_s, 0.2), 5.0))
        self.allow_remote = settings.allow_remote
        self.current: tuple[Endpoint, ...] | None = None  # None: never resolved
        self.resolutions = 0  # rounds that got an answer (NXDOMAIN included)
        self.changes = 0  # answers that differed from the one before, applied
        self.errors = 0
        self._task: asyncio.Task[None] | None = None

    async def resolve_once(self) -> None:
        import dns.exception

        try:
            endpoints = await resolve_endpoints(self.target, self.resolver, allow_remote=self.allow_remote)
        except (dns.exception.DNSException, OSError, ValueError) as e:
            self.errors += 1  # keep the Endpoints we have: a DNS hiccup must not empty the pool
            print(f"lbbench proxy: resolving {self.target.name} failed, keeping {len(self.current or ())} "
                  f"backend(s): {e}", file=sys.stderr)
            return
        self.resolutions += 1
        if endpoints != self.current:
            self.current = endpoints
            self.changes += 1
            self.apply(endpoints)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        due = loop.time()
        while True:
            due += self.every_s  # absolute ticks: a slow answer does not push every later round back
            await asyncio.sleep(max(0.0, due - loop.time()))
            await self.resolve_once()
            due = max(due, loop.time() - self.every_s)  # after a long stall, do not fire a burst

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def counters(self) -> dict[str, int]:
        return {"dns_resolutions": self.resolutions, "dns_endpoint_changes": self.changes,
                "dns_errors": self.errors}
