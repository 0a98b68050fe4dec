"""Ingress routing: Host and path prefix to a Service, as a Kubernetes Ingress does.

Host rules: an exact name, a wildcard `*.example.com` (one label or more), or `*` (any host).
An exact host wins over a wildcard, a wildcard over `*`; within the winning host, the longest
matching path prefix wins. Prefixes match whole path segments (Kubernetes `pathType: Prefix`):
`/api` matches `/api` and `/api/v1`, not `/apiary`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Generic, TypeVar

T = TypeVar("T")

_CACHE_MAX = 4096  # distinct Host values remembered (bounded: clients choose them)


def normalize_host(host: bytes) -> bytes:
    """Lower-case, without port; `[v6]:port` keeps the brackets' content."""
    host = host.strip().lower()
    if host.startswith(b"["):
        end = host.find(b"]")
        return host[1:end] if end > 0 else host
    colon = host.rfind(b":")
    return host[:colon] if colon >= 0 else host


def _prefix_matches(prefix: bytes, path: bytes) -> bool:
    if not prefix:
        return True
    return path == prefix or (path.startswith(prefix) and path[len(prefix):len(prefix) + 1] == b"/")


class Router(Generic[T]):
    """Rules (host, path prefix, target) compiled once; `route` is a dict lookup and a short scan."""

    def __init__(self, rules: Sequence[tuple[str, str, T]], default: T | None = None) -> None:
        self.default = default
        self._exact: dict[bytes, list[tuple[bytes, T]]] = {}
        self._wild: list[tuple[bytes, list[tuple[bytes, T]]]] = []
        self._any: list[tuple[bytes, T]] = []
        wild: dict[bytes, list[tuple[bytes, T]]] = {}
        for host, path, target in rules:
            if not path.startswith("/"):
                raise ValueError(f"Ingress path {path!r} must start with '/'")
            entry = (path.rstrip("/").encode(), target)
            h = host.strip().lower().encode()
            if h == b"*":
                self._any.append(entry)
            elif h.startswith(b"*."):
                wild.setdefault(h[1:], []).append(entry)  # ".example.com"
            else:
                self._exact.setdefault(h, []).append(entry)
        for group in (*self._exact.values(), *wild.values(), self._any):
            group.sort(key=lambda e: len(e[0]), reverse=True)
        self._wild = sorted(wild.items(), key=lambda kv: len(kv[0]), reverse=True)
        # Host -> (its groups, best first; whether the path matters; the answer when it does not).
        self._cache: dict[bytes, tuple[list[list[tuple[bytes, T]]], bool, T | None]] = {}

    def _entry(self, host: bytes) -> tuple[list[list[tuple[bytes, T]]], bool, T | None]:
        name = normalize_host(host)
        groups = []
        if name in self._exact:
            groups.append(self._exact[name])
        groups += [g for suffix, g in self._wild if name.endswith(suffix) and len(name) > len(suffix)]
        if self._any:
            groups.append(self._any)
        if not groups:
            entry: tuple[list[list[tuple[bytes, T]]], bool, T | None] = (groups, False, self.default)
        elif not groups[0][0][0]:  # the longest prefix of the best group is "/": every path matches it
            entry = (groups, False, groups[0][0][1])
        else:
            entry = (groups, True, None)
        if len(self._cache) >= _CACHE_MAX:
            self._cache.clear()
        self._cache[host] = entry
        return entry

    def route(self, host: bytes, target: bytes) -> T | None:
        entry = self._cache.get(host)
        if entry is None:
            entry = self._entry(host)
        groups, by_path, found = entry
        if not by_path:
            return found
        path = target.split(b"?", 1)[0]
        for group in groups:
            for prefix, target_ in group:
                if _prefix_matches(prefix, path):
                    return target_
        return self.default
