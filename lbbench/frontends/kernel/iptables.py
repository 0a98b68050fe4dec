"""kernel-iptables: kube-proxy's iptables mode (the cascade of random probabilities).

For the N endpoints of a Service, its ``KUBE-SVC-*`` chain holds N rules; rule i jumps to
endpoint i's ``KUBE-SEP-*`` chain (``DNAT --to-destination``) with probability 1/(N-i)
(``-m statistic --mode random``), the last one unconditionally: each endpoint ends up with
1/N. ``KUBE-SERVICES`` is jumped to from nat PREROUTING and OUTPUT; NodePorts go through
``KUBE-NODEPORTS`` for each node IP (kube-proxy with ``--nodeport-addresses``); Services
without endpoints are REJECTed from the filter table (INPUT/FORWARD/OUTPUT, new connections).

Like kube-proxy's full sync, every update rewrites both tables with one ``iptables-restore``
(atomic per table). The namespace is lbbench's own, so owning whole tables is safe. Left out,
as in kernel-nftables: masquerading (KUBE-MARK-MASQ, KUBE-POSTROUTING) and KUBE-EXT chains.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Mapping, Sequence
from pathlib import Path

from lbbench.frontends.dnat.plan import node_port_addrs, validate_service
from lbbench.frontends.kernel.nftables import KernelNftables, RulesApplier, nodeport_ips
from lbbench.model.service import Endpoint, ServiceSpec


def _hash16(text: str) -> str:
    return base64.b32encode(hashlib.sha256(text.encode()).digest()).decode()[:16]


def _port_name(spec: ServiceSpec) -> str:
    return f"{spec.namespace}/{spec.name}:p{spec.port}"


def svc_chain(spec: ServiceSpec) -> str:
    """kube-proxy's servicePortChainName: KUBE-SVC- + hash(servicePortName + protocol)."""
    return "KUBE-SVC-" + _hash16(_port_name(spec) + "tcp")


def sep_chain(spec: ServiceSpec, ep: Endpoint) -> str:
    """kube-proxy's servicePortEndpointChainName: KUBE-SEP- + hash(name + protocol + endpoint)."""
    return "KUBE-SEP-" + _hash16(_port_name(spec) + "tcp" + f"{ep.ip}:{ep.port}")


def _unique(eps: Sequence[Endpoint]) -> list[Endpoint]:
    seen: dict[tuple[str, int], Endpoint] = {}
    for ep in eps:
        seen.setdefault((ep.ip, ep.port), ep)
    return list(seen.values())


def _filter_table(services: Sequence[ServiceSpec], endpoints: Mapping[str, Sequence[Endpoint]]) -> list[str]:
    out = ["*filter", ":INPUT ACCEPT [0:0]", ":FORWARD ACCEPT [0:0]", ":OUTPUT ACCEPT [0:0]",
           ":KUBE-SERVICES - [0:0]"]
    for hook in ("INPUT", "FORWARD", "OUTPUT"):
        out.append(f'-A {hook} -m conntrack --ctstate NEW -m comment --comment "kubernetes service portals" '
                   "-j KUBE-SERVICES")
    for spec in services:
        if endpoints.get(spec.key):
            continue
        comment = f'-m comment --comment "{_port_name(spec)} has no endpoints"'
        out.append(f"-A KUBE-SERVICES -d {spec.cluster_ip}/32 -p tcp {comment} -m tcp --dport {spec.port} "
                   "-j REJECT --reject-with icmp-port-unreachable")
        # kube-proxy rejects NodePorts from KUBE-EXTERNAL-SERVICES (INPUT only); our clients are
        # local, so their packets meet the reject on OUTPUT, like the ClusterIP's
        for addr in node_port_addrs(spec):
            out.append(f"-A KUBE-SERVICES -d {addr.host}/32 -p tcp {comment} -m tcp --dport {addr.port} "
                       "-j REJECT --reject-with icmp-port-unreachable")
    return [*out, "COMMIT"]


def _service_rules(spec: ServiceSpec, eps: Sequence[Endpoint]) -> list[str]:
    svc = svc_chain(spec)
    out = []
    for i, ep in enumerate(eps):
        left = len(eps) - i
        comment = f'-m comment --comment "{_port_name(spec)} -> {ep.ip}:{ep.port}"'
        chance = f" -m statistic --mode random --probability {1.0 / left:0.10f}" if left > 1 else ""
        out.append(f"-A {svc} {comment}{chance} -j {sep_chain(spec, ep)}")
    for ep in _unique(eps):
        out.append(f'-A {sep_chain(spec, ep)} -p tcp -m comment --comment "{_port_name(spec)}" -m tcp '
                   f"-j DNAT --to-destination {ep.ip}:{ep.port}")
    return out


def _nat_table(services: Sequence[ServiceSpec], endpoints: Mapping[str, Sequence[Endpoint]]) -> list[str]:
    chains = [":PREROUTING ACCEPT [0:0]", ":INPUT ACCEPT [0:0]", ":OUTPUT ACCEPT [0:0]",
              ":POSTROUTING ACCEPT [0:0]", ":KUBE-SERVICES - [0:0]", ":KUBE-NODEPORTS - [0:0]"]
    rules = ['-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
             '-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES']
    for spec in services:
        eps = list(endpoints.get(spec.key, ()))
        if not eps:
            continue
        chains.append(f":{svc_chain(spec)} - [0:0]")
        chains += [f":{sep_chain(spec, ep)} - [0:0]" for ep in _unique(eps)]
        rules.append(f"-A KUBE-SERVICES -d {spec.cluster_ip}/32 -p tcp -m comment --comment "
                     f'"{_port_name(spec)} cluster IP" -m tcp --dport {spec.port} -j {svc_chain(spec)}')
        if node_port_addrs(spec):
            rules.append(f'-A KUBE-NODEPORTS -p tcp -m comment --comment "{_port_name(spec)}" -m tcp '
                         f"--dport {spec.node_port} -j {svc_chain(spec)}")
        rules += _service_rules(spec, eps)
    # "must be the last rule in this chain", as kube-proxy says; one per node IP (--nodeport-addresses)
    rules += [f'-A KUBE-SERVICES -d {ip}/32 -m comment --comment "kubernetes service nodeports" -j KUBE-NODEPORTS'
              for ip in nodeport_ips(services)]
    return ["*nat", *chains, *rules, "COMMIT"]


def render_iptables(services: Sequence[ServiceSpec], endpoints: Mapping[str, Sequence[Endpoint]]) -> str:
    """The whole filter and nat tables, in iptables-restore format (deterministic)."""
    for spec in services:
        validate_service(spec)
    return "\n".join([*_filter_table(services, endpoints), *_nat_table(services, endpoints)]) + "\n"


_EMPTY = "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n" \
         "*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n" \
         ":POSTROUTING ACCEPT [0:0]\nCOMMIT\n"


class KernelIptables(KernelNftables):
    """kube-proxy's iptables mode, applied with iptables-restore in lbbench's private namespace."""

    name = "kernel-iptables"
    layer = "l4"
    tool = "iptables-restore"

    def make_applier(self, directory: Path | None) -> RulesApplier:
        folder = directory / "iptables" if directory is not None else None
        return RulesApplier(self.supervisor, folder, "iptables-restore", [], ".rules", "iptables")

    def render_start(self) -> list[str]:
        return [render_iptables(list(self.plan.services), self.endpoints)]

    def render_update(self, spec: ServiceSpec, previous: Sequence[Endpoint],
                      proposed: Mapping[str, Sequence[Endpoint]]) -> list[str]:
        return [render_iptables(list(self.plan.services), proposed)]

    def render_stop(self) -> str:
        return _EMPTY
