"""Front ends by name, and why one cannot run here."""

from __future__ import annotations

import importlib

from lbbench.frontends.base import Frontend

# name -> (module, class); imported lazily so a missing optional part never breaks the others
FRONTENDS: dict[str, tuple[str, str]] = {
    "userspace-dnat": ("lbbench.frontends.dnat", "UserspaceDnat"),
    "kernel-nftables": ("lbbench.frontends.nftables", "KernelNftables"),
    "kernel-iptables": ("lbbench.frontends.iptables", "KernelIptables"),
    "haproxy-tcp": ("lbbench.frontends.haproxy", "HaproxyTcp"),
    "l7-proxy": ("lbbench.frontends.proxy", "L7Proxy"),
    "haproxy": ("lbbench.frontends.haproxy", "HaproxyHttp"),
    "nginx": ("lbbench.frontends.nginx", "Nginx"),
    "httpd": ("lbbench.frontends.httpd", "Httpd"),
}
KERNEL = ("kernel-nftables", "kernel-iptables")


def frontend_class(name: str) -> type[Frontend] | str:
    """The class, or the reason it cannot be had (unknown, not built, or unavailable here)."""
    if name not in FRONTENDS:
        return f"unknown front end {name!r}; known: {', '.join(FRONTENDS)}"
    module_name, class_name = FRONTENDS[name]
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError):
        return f"{name} is not built in this version of lbbench"
    if not (isinstance(cls, type) and issubclass(cls, Frontend)):
        return f"{name} is not built in this version of lbbench"
    return cls


def unavailable_reason(name: str) -> str | None:
    cls = frontend_class(name)
    if isinstance(cls, str):
        return cls
    return cls.unavailable_reason()
