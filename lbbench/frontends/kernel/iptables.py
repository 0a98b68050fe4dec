"""kernel-iptables: kube-proxy's iptables mode (the cascade of random probabilities).

For the N endpoints of a Service, its ``KUBE-SVC-*`` chain holds N rules; rule i jumps to
endpoint i's ``KUBE-SEP-*`` chain (``DNAT --to-destination``) with probability 1/(N-i)
(``-m statistic --mode random``), the last one unconditionally: each endpoint ends up with
1/N. ``KUBE-SERVICES`` is jumped to from nat PREROUTING and OUTPUT and holds one rule per
Service, walked in order for every new connection (the O(n) of iptables mode); NodePorts go
through ``KUBE-NODEPORTS`` for each node IP (kube-proxy with ``--nodeport-addresses``);
Services without endpoints are REJECTed from the filter table (INPUT/FORWARD/OUTPUT, new
connections).

Syncs are kube-proxy's since KEP-3453 (MinimizeIPTablesRestore):
- a full sync (start, :meth:`full_resync`, and every FULL_SYNC_PERIOD_S) rewrites both
  tables with one ``iptables-restore`` (atomic per table; the namespace is lbbench's own,
  so owning whole tables is safe);
- a partial sync is one ``iptables-restore --noflush`` holding the top-level chains
  (filter and nat ``KUBE-SERVICES``, ``KUBE-NODEPORTS``: rewritten in full every time, as
  kube-proxy does) plus only the ``KUBE-SVC``/``KUBE-SEP`` chains of the Services that
  changed; chains no longer used are deleted (``-X``). Chains not named are left alone.
- with more than 1000 endpoints in all, the per-endpoint rules carry no comments
  (kube-proxy's large-cluster mode, which keeps restores small).

The backend is a setting: ``iptables-restore`` as installed (``auto``), or explicitly
``iptables-legacy-restore`` (setsockopt, no netlink: no size limit in a user namespace) or
``iptables-nft-restore`` (netlink; inside a user namespace a restore must fit the
namespace's netlink buffer). :attr:`KernelIptables.backend_label` records which one ran.
Left out, as in kernel-nftables: masquerading (KUBE-MARK-MASQ, KUBE-POSTROUTING) and
KUBE-EXT chains.
"""

from __future__ import annotations

import base64
import hashlib
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal

from lbbench.frontends.base import FrontendPlan
from lbbench.frontends.dnat.plan import node_port_addrs, validate_service
from lbbench.frontends.kernel.applier import RulesApplier
from lbbench.frontends.kernel.frontend import Change, KernelFrontend
from lbbench.frontends.kernel.nftables import nodeport_ips
from lbbench.model.service import Endpoint, ServiceSpec
from lbbench.system.netns import find_tool
from lbbench.system.procs import Supervisor

Backend = Literal["auto", "legacy", "nft"]
BACKEND_TOOLS: dict[str, str] = {"auto": "iptables-restore", "legacy": "iptables-legacy-restore",
                                 "nft": "iptables-nft-restore"}
LARGE_CLUSTER_ENDPOINTS = 1000  # kube-proxy's largeClusterEndpointsThreshold
FULL_SYNC_PERIOD_S = 3600.0  # kube-proxy's FullSyncPeriod: a partial sync older than this is made full


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


def large_cluster(endpoints: Mapping[str, Sequence[Endpoint]]) -> bool:
    return sum(len(eps) for eps in endpoints.values()) > LARGE_CLUSTER_ENDPOINTS


def _filter_rules(services: Sequence[ServiceSpec], endpoints: Mapping[str, Sequence[Endpoint]]) -> list[str]:
    """filter KUBE-SERVICES: a REJECT for each Service without endpoints."""
    out = []
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
    return out


def _filter_table(services: Sequence[ServiceSpec], endpoints: Mapping[str, Sequence[Endpoint]]) -> list[str]:
    out = ["*filter", ":INPUT ACCEPT [0:0]", ":FORWARD ACCEPT [0:0]", ":OUTPUT ACCEPT [0:0]",
           ":KUBE-SERVICES - [0:0]"]
    for hook in ("INPUT", "FORWARD", "OUTPUT"):
        out.append(f'-A {hook} -m conntrack --ctstate NEW -m comment --comment "kubernetes service portals" '
                   "-j KUBE-SERVICES")
    return [*out, *_filter_rules(services, endpoints), "COMMIT"]


def _service_rules(spec: ServiceSpec, eps: Sequence[Endpoint], comments: bool = True) -> list[str]:
    svc = svc_chain(spec)
    out = []
    for i, ep in enumerate(eps):
        left = len(eps) - i
        comment = f' -m comment --comment "{_port_name(spec)} -> {ep.ip}:{ep.port}"' if comments else ""
        chance = f" -m statistic --mode random --probability {1.0 / left:0.10f}" if left > 1 else ""
        out.append(f"-A {svc}{comment}{chance} -j {sep_chain(spec, ep)}")
    for ep in _unique(eps):
        comment = f' -m comment --comment "{_port_name(spec)}"' if comments else ""
        out.append(f"-A {sep_chain(spec, ep)} -p tcp{comment} -m tcp -j DNAT --to-destination {ep.ip}:{ep.port}")
    return out


def _service_chains(spec: ServiceSpec, eps: Sequence[Endpoint]) -> list[str]:
    return [svc_chain(spec), *(sep_chain(spec, ep) for ep in _unique(eps))] if eps else []


def _top_level_rules(services: Sequence[ServiceSpec], endpoints: Mapping[str, Sequence[Endpoint]]) -> list[str]:
    """nat KUBE-SERVICES (one rule per Service with endpoints, in order) and KUBE-NODEPORTS."""
    rules = []
    for spec in services:
        if not endpoints.get(spec.key):
            continue
        rules.append(f"-A KUBE-SERVICES -d {spec.cluster_ip}/32 -p tcp -m comment --comment "
                     f'"{_port_name(spec)} cluster IP" -m tcp --dport {spec.port} -j {svc_chain(spec)}')
        if node_port_addrs(spec):
            rules.append(f'-A KUBE-NODEPORTS -p tcp -m comment --comment "{_port_name(spec)}" -m tcp '
                         f"--dport {spec.node_port} -j {svc_chain(spec)}")
    # "must be the last rule in this chain", as kube-proxy says; one per node IP (--nodeport-addresses)
    rules += [f'-A KUBE-SERVICES -d {ip}/32 -m comment --comment "kubernetes service nodeports" -j KUBE-NODEPORTS'
              for ip in nodeport_ips(services)]
    return rules


_TOP_LEVEL = [":KUBE-SERVICES - [0:0]", ":KUBE-NODEPORTS - [0:0]"]


def _nat_table(services: Sequence[ServiceSpec], endpoints: Mapping[str, Sequence[Endpoint]]) -> list[str]:
    comments = not large_cluster(endpoints)
    chains = [":PREROUTING ACCEPT [0:0]", ":INPUT ACCEPT [0:0]", ":OUTPUT ACCEPT [0:0]",
              ":POSTROUTING ACCEPT [0:0]", *_TOP_LEVEL]
    rules = ['-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
             '-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
             *_top_level_rules(services, endpoints)]
    for spec in services:
        eps = list(endpoints.get(spec.key, ()))
        chains += [f":{c} - [0:0]" for c in _service_chains(spec, eps)]
        rules += _service_rules(spec, eps, comments) if eps else []
    return ["*nat", *chains, *rules, "COMMIT"]


def render_iptables(services: Sequence[ServiceSpec], endpoints: Mapping[str, Sequence[Endpoint]]) -> str:
    """The whole filter and nat tables, in iptables-restore format (deterministic): a full sync."""
    for spec in services:
        validate_service(spec)
    return "\n".join([*_filter_table(services, endpoints), *_nat_table(services, endpoints)]) + "\n"


def render_partial(services: Sequence[ServiceSpec], changes: Mapping[ServiceSpec, Change],
                   endpoints: Mapping[str, Sequence[Endpoint]]) -> str:
    """An ``iptables-restore --noflush`` input for one partial sync (kube-proxy's, KEP-3453).

    `endpoints` is the state after the sync. Declared (and so flushed and rewritten): the
    top-level chains, and the changed Services' current chains; their chains no longer used
    are declared and deleted. Every other Service's chains are not mentioned, so untouched.
    """
    comments = not large_cluster(endpoints)
    chains = list(_TOP_LEVEL)
    rules = _top_level_rules(services, endpoints)
    stale: list[str] = []
    for spec, (previous, new) in changes.items():
        current = _service_chains(spec, new)
        chains += [f":{c} - [0:0]" for c in current]
        rules += _service_rules(spec, new, comments) if new else []
        gone = [c for c in _service_chains(spec, previous) if c not in current]
        chains += [f":{c} - [0:0]" for c in gone]
        stale += [f"-X {c}" for c in gone]
    filter_part = ["*filter", ":KUBE-SERVICES - [0:0]", *_filter_rules(services, endpoints), "COMMIT"]
    return "\n".join([*filter_part, "*nat", *chains, *rules, *stale, "COMMIT"]) + "\n"


_EMPTY = "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n" \
         "*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n" \
         ":POSTROUTING ACCEPT [0:0]\nCOMMIT\n"


def backend_label(tool: str) -> str:
    """What `tool --version` says it drives: 'legacy' or 'nf_tables' (kube-proxy logs the same)."""
    path = find_tool(tool)
    if path is None:
        return "missing"
    out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=10, check=False).stdout
    return "legacy" if "legacy" in out else "nf_tables" if "nf_tables" in out else out.strip() or "unknown"


class KernelIptables(KernelFrontend):
    """kube-proxy's iptables mode, applied with iptables-restore in lbbench's private namespace."""

    name = "kernel-iptables"
    tool = "iptables-restore"

    def __init__(self, plan: FrontendPlan, supervisor: Supervisor, backend: Backend = "auto",
                 full_sync_period_s: float = FULL_SYNC_PERIOD_S) -> None:
        super().__init__(plan, supervisor)
        if backend not in BACKEND_TOOLS:
            raise ValueError(f"iptables backend must be one of {', '.join(BACKEND_TOOLS)}, got {backend!r}")
        self.backend = backend
        self.full_sync_period_s = full_sync_period_s
        self.backend_label = ""
        self._last_full = 0.0
        self._next_is_full = False

    def make_applier(self, directory: Path | None) -> RulesApplier:
        tool = BACKEND_TOOLS[self.backend]
        self.backend_label = backend_label(tool)
        folder = directory / "iptables" if directory is not None else None
        return RulesApplier(self.supervisor, folder, tool, [], ".rules", "iptables")

    def check(self, services: Sequence[ServiceSpec]) -> None:
        for spec in services:
            validate_service(spec)

    def loader_args(self, kind: str) -> Sequence[str]:
        return ("--noflush",) if kind == "partial" and not self._next_is_full else ()

    def render_full(self, endpoints: Mapping[str, Sequence[Endpoint]]) -> list[str]:
        self._last_full = time.monotonic()
        return [render_iptables(list(self.plan.services), endpoints)]

    def render_sync(self, changes: Mapping[ServiceSpec, Change],
                    proposed: Mapping[str, Sequence[Endpoint]]) -> list[str]:
        # kube-proxy makes a sync full when the last full one is older than its period
        self._next_is_full = time.monotonic() - self._last_full > self.full_sync_period_s
        if self._next_is_full:
            return self.render_full(proposed)
        return [render_partial(list(self.plan.services), changes, proposed)]

    def render_stop(self) -> str:
        return _EMPTY
