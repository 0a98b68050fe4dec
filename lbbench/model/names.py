"""The one list of front-end names and their families."""

from __future__ import annotations

from typing import Literal, get_args

FrontendName = Literal["userspace-dnat", "kernel-nftables", "kernel-iptables", "ebpf-socketlb", "haproxy-tcp",
                       "l7-proxy", "haproxy", "nginx", "httpd"]
FRONTENDS: tuple[FrontendName, ...] = get_args(FrontendName)
# front ends whose data plane is the kernel's netfilter, inside lbbench's private namespace
KERNEL_FRONTENDS: tuple[FrontendName, ...] = ("kernel-nftables", "kernel-iptables")
