"""Front ends by name, and why one cannot run here."""

from __future__ import annotations

import importlib

from lbbench.frontends.base import Frontend
from lbbench.model.names import FRONTENDS, FrontendName

# name -> (module, class); imported lazily so a missing optional part never breaks the others
CLASSES: dict[FrontendName, tuple[str, str]] = {
    "userspace-dnat": ("lbbench.frontends.dnat.frontend", "UserspaceDnat"),
    "kernel-nftables": ("lbbench.frontends.kernel.nftables", "KernelNftables"),
    "kernel-iptables": ("lbbench.frontends.kernel.iptables", "KernelIptables"),
    "ebpf-socketlb": ("lbbench.frontends.kernel.ebpf", "EbpfSocketLb"),
    "haproxy-tcp": ("lbbench.frontends.reference.haproxy", "HaproxyTcp"),
    "l7-proxy": ("lbbench.frontends.proxy.frontend", "L7Proxy"),
    "haproxy": ("lbbench.frontends.reference.haproxy", "HaproxyHttp"),
    "nginx": ("lbbench.frontends.reference.nginx", "Nginx"),
    "httpd": ("lbbench.frontends.reference.httpd", "Httpd"),
}


def frontend_class(name: str) -> type[Frontend] | str:
    """The class, or the reason it cannot be had (unknown, not built, or unavailable here)."""
    if name not in FRONTENDS:
        return f"unknown front end {name!r}; known: {', '.join(FRONTENDS)}"
    module_name, class_name = CLASSES[name]
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
