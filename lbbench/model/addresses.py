"""Loopback-only addressing: parsing, validation and the run's address allocator."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

LOOPBACK = ipaddress.IPv4Network("127.0.0.0/8")


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.IPv4Address(host) in LOOPBACK
    except ipaddress.AddressValueError:
        return False


def require_loopback(host: str, what: str = "address") -> str:
    """Return `host` if it is in 127.0.0.0/8, else raise ValueError with a clear reason."""
    if host == "localhost":
        return "127.0.0.1"
    if not is_loopback(host):
        raise ValueError(f"{what} {host!r} is not in 127.0.0.0/8 (lbbench uses loopback only)")
    return host


@dataclass(frozen=True)
class HostPort:
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


def parse_hostport(text: str, *, default_port: int | None = None, allow_remote: bool = False) -> HostPort:
    """Parse 'IP:PORT' (loopback only unless `allow_remote`, for running inside a real cluster).

    Raises ValueError with a readable message.
    """
    host, sep, port_s = text.rpartition(":")
    if not sep:
        if default_port is None:
            raise ValueError(f"expected IP:PORT, got {text!r}")
        host, port_s = text, str(default_port)
    try:
        port = int(port_s)
    except ValueError:
        raise ValueError(f"expected IP:PORT with a numeric port, got {text!r}") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"port {port} out of range 0-65535 in {text!r}")
    if allow_remote and host != "localhost":
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise ValueError(f"expected an IP address, got {host!r} in {text!r}") from None
        return HostPort(host, port)
    return HostPort(require_loopback(host), port)


class AddressAllocator:
    """Hands out addresses from a /16 in order, never the same one twice in a run.

    kube-proxy only learns that a pod is gone at the next sync; a recreated pod must
    therefore get a fresh IP, or stale rules would silently reach the new pod.
    """

    def __init__(self, network: str, first_host: int = 2) -> None:
        self.network = ipaddress.IPv4Network(network)
        if not self.network.subnet_of(LOOPBACK):
            raise ValueError(f"{network} is not inside 127.0.0.0/8")
        self._next = first_host
        self._used: set[str] = set()

    def allocate(self) -> str:
        while True:
            if self._next >= self.network.num_addresses - 1:
                raise RuntimeError(f"address range {self.network} exhausted")
            addr = str(self.network.network_address + self._next)
            self._next += 1
            if addr not in self._used:
                self._used.add(addr)
                return addr

    def reserve(self, addr: str) -> None:
        self._used.add(addr)
