"""Turn a URL into a loopback target: `http://IP:PORT/path?query` or a name resolved by cluster DNS."""

from __future__ import annotations

import ipaddress
import urllib.parse
from dataclasses import dataclass

from lbbench.model.addresses import HostPort, require_loopback


@dataclass(frozen=True)
class Target:
    addr: HostPort
    path: str  # path and query, as sent in the request line
    host_header: str | None  # the name for the Host header, None for an IP target


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def parse_url(url: str, dns: HostPort | None = None, timeout_s: float = 2.0, allow_remote: bool = False) -> Target:
    """Parse and resolve `url`; raises ValueError with a one-line reason.

    `allow_remote` (only from `lbbench load --allow-remote`, inside a real cluster) lifts the
    loopback rule: IPs are taken as they are and names without --dns go to the system resolver.
    """
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "http":
        raise ValueError(f"only http:// URLs are supported, got {url!r}")
    host = parts.hostname
    if not host:
        raise ValueError(f"no host in URL {url!r}")
    try:
        port = parts.port or 80
    except ValueError:
        raise ValueError(f"bad port in URL {url!r}") from None
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    if _is_ip(host):
        return Target(HostPort(host if allow_remote else require_loopback(host, "URL host"), port), path, None)
    header = host if port == 80 else f"{host}:{port}"
    if host == "localhost":
        return Target(HostPort("127.0.0.1", port), path, header)
    if dns is None and allow_remote:
        return Target(HostPort(_system_resolve(host, port), port), path, header)
    if dns is None:
        raise ValueError(f"{host!r} is a name: give --dns IP:PORT (the cluster DNS) to resolve it")
    return Target(HostPort(require_loopback(_resolve(host, dns, timeout_s), f"{host} resolves to"), port),
                  path, header)


def _resolve(name: str, dns: HostPort, timeout_s: float) -> str:
    try:
        from lbbench.cluster.dns import resolve_a
    except ImportError:
        raise ValueError("resolving names needs lbbench.cluster.dns, which is not available") from None
    try:
        return resolve_a(name, dns, timeout_s)
    except (OSError, LookupError) as e:  # TimeoutError is an OSError; NameNotFound a LookupError
        raise ValueError(f"cannot resolve {name!r} via DNS {dns}: {e}") from None


def _system_resolve(name: str, port: int) -> str:
    import socket

    try:
        infos = socket.getaddrinfo(name, port, socket.AF_INET, socket.SOCK_STREAM)
    except OSError as e:
        raise ValueError(f"cannot resolve {name!r}: {e}") from None
    return str(infos[0][4][0])
