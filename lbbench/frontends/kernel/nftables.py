"""kernel-nftables: the real kernel doing kube-proxy's random DNAT, in the nftables layout.

The ruleset follows kube-proxy's nftables mode (pkg/proxy/nftables): base chains
``nat-prerouting``/``nat-output`` (priority -100, dstnat) jump to ``services``, which looks
up ``ip daddr . meta l4proto . th dport`` in the ``service-ips`` verdict map (NodePorts:
``ip daddr @nodeport-ips`` and ``meta l4proto . th dport`` in ``service-nodeports``). Each
Service chain does ``numgen random mod N vmap { 0 : goto endpoint-..., ... }`` and each
endpoint chain ``dnat to IP:PORT``. A Service without endpoints is in
``no-endpoint-services``/``no-endpoint-nodeports`` instead, checked from the filter chains
on input/forward/output (priority -110) and sent to ``reject``, as kube-proxy does.

Left out, because one host's loopback does not need them: masquerading (``mark-for-
masquerade``, ``nat-postrouting``), the ``external-`` chains (which only add the masquerade
mark before jumping to the Service chain), LoadBalancerSourceRanges firewalling, session
affinity, and the LoadBalancer IP in ``service-ips``: kube-proxy short-circuits in-cluster
traffic to it, but lbbench's clients are outside the cluster, so their connections go
through the cloud balancer (a userspace L4 hop over the node IP:NodePort pairs, see
:func:`lbbench.frontends.dnat.plan.forwarder_plan`) and are DNATed by the NodePort rules.

Every sync is one ``nft -f`` transaction that touches only the Services that changed (like
kube-proxy's partial syncs, which batch every change of a sync period, across Services):
per Service new endpoint chains, the Service chain's vmap rule and its map entries, then its
stale endpoint chains, deleted once nothing points at them. The start is
one transaction when small; nft cannot raise its netlink buffer inside an unprivileged user
namespace, so a large table is built in several (the skeleton, then whole Services in
batches). As real root lbbench's namespace has no user namespace (system.netns) and nft
raises its buffer itself: the skeleton, then every Service in one transaction, and a sync is
always one. (nft 1.0.6 itself is slow with tens of thousands of chains: a one-transaction
start of 10,000 Services takes tens of seconds in the tool, and every later ``nft -f`` first
reads the table back: that is nft's userspace, not the kernel's lookup.) Each applied file
is kept, with its apply time, under ``artifacts_dir/nftables``.
Rules are written only inside lbbench's private namespace.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from lbbench.frontends.dnat.plan import node_port_addrs, validate_service
from lbbench.frontends.kernel.applier import RulesApplier
from lbbench.frontends.kernel.frontend import Change, KernelFrontend
from lbbench.model.service import Endpoint, ServiceSpec
from lbbench.system.netns import real_root

TABLE = "lbbench"
FAMILY = "ip"
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_NAME_MAX = 240  # kube-proxy's chainNameBaseLengthMax


# ---------------------------------------------------------------------------------------
# Names (kube-proxy's hashAndTruncate scheme)


def _hashed(name: str) -> str:
    digest = base64.b32encode(hashlib.sha256(name.encode()).digest()).decode()
    out = f"{digest[:8]}-{name}"
    return out if len(out) <= _NAME_MAX else out[: _NAME_MAX - 3] + "..."


def _port_name(spec: ServiceSpec) -> str:
    return f"{spec.namespace}/{spec.name}/tcp/p{spec.port}"


def service_chain(spec: ServiceSpec) -> str:
    return "service-" + _hashed(_port_name(spec))


def endpoint_chain(spec: ServiceSpec, ep: Endpoint) -> str:
    return "endpoint-" + _hashed(f"{_port_name(spec)}__{ep.ip}/{ep.port}")


def check_names(spec: ServiceSpec) -> None:
    """Names go into chain names verbatim, as in kube-proxy: they must be DNS labels."""
    for what, value in (("namespace", spec.namespace), ("name", spec.name)):
        if not _DNS_LABEL.match(value) or len(value) > 63:
            raise ValueError(f"service {spec.key}: {what} {value!r} is not a DNS label ([a-z0-9-], <= 63)")


# ---------------------------------------------------------------------------------------
# Rendering

_MAPS = ("service-ips", "service-nodeports", "no-endpoint-services", "no-endpoint-nodeports")
_T = f"{FAMILY} {TABLE}"
# nft 1.0.6 cannot enlarge its netlink send buffer in an unprivileged user namespace
# (SO_SNDBUFFORCE is refused), so one transaction must fit net.core.wmem_default (212992
# bytes): the one-file ruleset fails at ~130 Services x 2 endpoints ("Message too long").
# Measured netlink bytes per byte of text (shortest names, the densest): <= 2.1 in the
# one-command-per-line form, <= 3.0 in the block form; both bounds keep a 1.5x margin.
COMMANDS_TEXT_MAX = 64_000  # -> <= ~135 KB of netlink
UNLIMITED = 1 << 62  # as real root (no user namespace) nft raises its buffer itself (SO_SNDBUFFORCE)
BLOCK_TEXT_MAX = 32_000  # the whole ruleset in block form, one transaction -> <= ~96 KB


@dataclass(frozen=True)
class _Element:
    map: str
    key: str
    value: str  # what follows the key: [comment "..."] : goto CHAIN

    def text(self) -> str:
        return f"{self.key} {self.value}"


def service_elements(spec: ServiceSpec, has_endpoints: bool) -> list[_Element]:
    """`spec`'s entries: in service-ips/-nodeports with endpoints, else in the no-endpoint maps."""
    key = f"{spec.cluster_ip} . tcp . {spec.port}"
    np_key = f"tcp . {spec.node_port}" if node_port_addrs(spec) else None
    if has_endpoints:
        target = f": goto {service_chain(spec)}"
        out = [_Element("service-ips", key, target)]
        if np_key is not None:
            out.append(_Element("service-nodeports", np_key, target))
        return out
    reject = f'comment "{spec.key}:p{spec.port}" : goto reject-chain'
    out = [_Element("no-endpoint-services", key, reject)]
    if np_key is not None:
        out.append(_Element("no-endpoint-nodeports", np_key, reject))
    return out


def _elements(services: Sequence[ServiceSpec], endpoints: Mapping[str, Sequence[Endpoint]]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {m: [] for m in _MAPS}
    for spec in services:
        for el in service_elements(spec, bool(endpoints.get(spec.key))):
            out[el.map].append(el.text())
    return out


def _add_elements(elements: Sequence[_Element]) -> list[str]:
    return [f"add element {_T} {el.map} {{ {el.text()} }}" for el in elements]


def _delete_elements(elements: Sequence[_Element]) -> list[str]:
    return [f"delete element {_T} {el.map} {{ {el.key} }}" for el in elements]


def nodeport_ips(services: Sequence[ServiceSpec]) -> list[str]:
    return sorted({addr.host for spec in services for addr in node_port_addrs(spec)},
                  key=lambda ip: tuple(int(x) for x in ip.split(".")))


def _unique_endpoints(eps: Sequence[Endpoint]) -> list[Endpoint]:
    seen: dict[tuple[str, int], Endpoint] = {}
    for ep in eps:
        seen.setdefault((ep.ip, ep.port), ep)
    return list(seen.values())


def _vmap_rule(spec: ServiceSpec, eps: Sequence[Endpoint]) -> str:
    # Duplicates keep their weight: two slots of the vmap may point at one endpoint chain.
    slots = ", ".join(f"{i} : goto {endpoint_chain(spec, ep)}" for i, ep in enumerate(eps))
    return f"numgen random mod {len(eps)} vmap {{ {slots} }}"


def _dnat_rule(ep: Endpoint) -> str:
    return f"meta l4proto tcp dnat to {ep.ip}:{ep.port}"


def _map_block(name: str, key_type: str, comment: str, elements: list[str]) -> list[str]:
    lines = [f"\tmap {name} {{", f"\t\ttype {key_type} : verdict", f'\t\tcomment "{comment}"']
    if elements:
        lines.append("\t\telements = { " + ",\n\t\t\t     ".join(elements) + " }")
    return [*lines, "\t}", ""]


def _chain_block(name: str, lines: Sequence[str]) -> list[str]:
    return [f"\tchain {name} {{", *(f"\t\t{line}" for line in lines), "\t}", ""]


_BASE_CHAINS = (
    ("filter-input", "filter", "input", -110, "ct state new jump service-endpoints-check"),
    ("filter-forward", "filter", "forward", -110, "ct state new jump service-endpoints-check"),
    ("filter-output", "filter", "output", -110, "ct state new jump service-endpoints-check"),
    ("nat-prerouting", "nat", "prerouting", -100, "jump services"),
    ("nat-output", "nat", "output", -100, "jump services"),
)
_SERVICE_KEY = "ipv4_addr . inet_proto . inet_service"
_NODEPORT_KEY = "inet_proto . inet_service"


def _check(services: Sequence[ServiceSpec]) -> None:
    for spec in services:
        validate_service(spec)
        check_names(spec)


def _table_block(services: Sequence[ServiceSpec], endpoints: Mapping[str, Sequence[Endpoint]],
                 contents: bool) -> str:
    """``table ip lbbench {...}``; without contents: every chain and map, but no Service in them."""
    el = _elements(services, endpoints) if contents else {m: [] for m in _MAPS}
    out = [f"table {FAMILY} {TABLE} {{", '\tcomment "lbbench: kube-proxy nftables-mode layout"']
    for name, ctype, hook, prio, rule in _BASE_CHAINS:
        out += _chain_block(name, [f"type {ctype} hook {hook} priority {prio}; policy accept;", rule])
    node_ips = nodeport_ips(services) if contents else []
    out += ["\tset nodeport-ips {", "\t\ttype ipv4_addr", '\t\tcomment "IPs that accept NodePort traffic"']
    if node_ips:
        out.append("\t\telements = { " + ", ".join(node_ips) + " }")
    out += ["\t}", ""]
    out += _map_block("no-endpoint-services", _SERVICE_KEY,
                      "vmap to drop or reject packets to services with no endpoints", el["no-endpoint-services"])
    out += _map_block("no-endpoint-nodeports", _NODEPORT_KEY,
                      "vmap to drop or reject packets to service nodeports with no endpoints",
                      el["no-endpoint-nodeports"])
    out += _chain_block("reject-chain", [
        'comment "helper for @no-endpoint-services / @no-endpoint-nodeports"', "reject"])
    out += _chain_block("service-endpoints-check", [
        "ip daddr . meta l4proto . th dport vmap @no-endpoint-services",
        "ip daddr @nodeport-ips meta l4proto . th dport vmap @no-endpoint-nodeports"])
    out += _map_block("service-ips", _SERVICE_KEY, "ClusterIP traffic", el["service-ips"])
    out += _map_block("service-nodeports", _NODEPORT_KEY, "NodePort traffic", el["service-nodeports"])
    out += _chain_block("services", [
        "ip daddr . meta l4proto . th dport vmap @service-ips",
        "ip daddr @nodeport-ips meta l4proto . th dport vmap @service-nodeports"])
    for spec in services if contents else ():
        eps = list(endpoints.get(spec.key, ()))
        if not eps:
            continue
        out += _chain_block(service_chain(spec), [_vmap_rule(spec, eps)])
        for ep in _unique_endpoints(eps):
            out += _chain_block(endpoint_chain(spec, ep), [_dnat_rule(ep)])
    if out[-1] == "":
        out.pop()
    out.append("}")
    return "\n".join(out) + "\n"


def render_ruleset(services: Sequence[ServiceSpec], endpoints: Mapping[str, Sequence[Endpoint]]) -> str:
    """The whole ``table ip lbbench`` for these Services and Endpoints (deterministic)."""
    _check(services)
    return _table_block(services, endpoints, contents=True)


_REPLACE_TABLE = f"add table {_T}\ndelete table {_T}\n"  # the add makes the delete safe when it is absent


def render_full_apply(services: Sequence[ServiceSpec], endpoints: Mapping[str, Sequence[Endpoint]]) -> str:
    """Replace the table atomically, in one transaction (only small rulesets fit: see BLOCK_TEXT_MAX)."""
    return _REPLACE_TABLE + render_ruleset(services, endpoints)


def pack(units: Iterable[Sequence[str]], max_chars: int = COMMANDS_TEXT_MAX) -> list[str]:
    """Consecutive units of lines joined into as few transactions as fit `max_chars`; a unit is never split."""
    out: list[str] = []
    current: list[str] = []
    size = 0
    for unit in units:
        n = sum(len(line) + 1 for line in unit)
        if current and size + n > max_chars:
            out.append("\n".join(current) + "\n")
            current, size = [], 0
        current += unit
        size += n
    if current:
        out.append("\n".join(current) + "\n")
    return out


def _service_unit(spec: ServiceSpec, eps: Sequence[Endpoint]) -> list[str]:
    """One Service into a table that has none of it yet: its chains, then its map entries."""
    lines: list[str] = []
    if eps:
        lines.append(f"add chain {_T} {service_chain(spec)}")
        for ep in _unique_endpoints(eps):
            chain = endpoint_chain(spec, ep)
            lines += [f"add chain {_T} {chain}", f"add rule {_T} {chain} {_dnat_rule(ep)}"]
        lines.append(f"add rule {_T} {service_chain(spec)} {_vmap_rule(spec, eps)}")
    return lines + _add_elements(service_elements(spec, bool(eps)))


def render_start(services: Sequence[ServiceSpec], endpoints: Mapping[str, Sequence[Endpoint]], *,
                 block_max: int = BLOCK_TEXT_MAX, commands_max: int = COMMANDS_TEXT_MAX) -> list[str]:
    """The table from scratch, in as few ``nft -f`` transactions as fit nft's netlink buffer.

    Small: one transaction, the readable block form. Large: first the table with its base
    chains, helper chains and empty maps; then the NodePort IPs, then each Service whole (its
    chains, then its map entries, so no Service is ever half-programmed), packed in batches.
    """
    _check(services)
    if len(services) * 100 <= block_max:  # maybe small enough; rendering the block of thousands costs seconds
        whole = render_full_apply(services, endpoints)
        if len(whole) <= block_max:
            return [whole]
    skeleton = _REPLACE_TABLE + _table_block(services, endpoints, contents=False)
    ips = nodeport_ips(services)
    units: list[Sequence[str]] = [[f"add element {_T} nodeport-ips {{ {', '.join(ips[i:i + 200])} }}"]
                                  for i in range(0, len(ips), 200)]
    units += [_service_unit(spec, list(endpoints.get(spec.key, ()))) for spec in services]
    return [skeleton, *pack(units, commands_max)]


def _update_units(spec: ServiceSpec, previous: Sequence[Endpoint], new: Sequence[Endpoint]) -> list[list[str]]:
    """Units moving `spec` from `previous` to `new` endpoints, in order: new endpoint chains; the
    switch (the Service chain's vmap rule and the Service's map entries, one unit, never split);
    stale endpoint chains, deleted once nothing points at them."""
    svc = service_chain(spec)
    old_chains = {endpoint_chain(spec, ep) for ep in previous}
    created = [[f"add chain {_T} {chain}", f"flush chain {_T} {chain}", f"add rule {_T} {chain} {_dnat_rule(ep)}"]
               for ep in _unique_endpoints(new) if (chain := endpoint_chain(spec, ep)) not in old_chains]
    new_chains = {endpoint_chain(spec, ep) for ep in new}
    stale = [[f"flush chain {_T} {chain}", f"delete chain {_T} {chain}"]
             for ep in _unique_endpoints(previous) if (chain := endpoint_chain(spec, ep)) not in new_chains]
    switch: list[str] = []
    if bool(previous) != bool(new):  # the Service moves between the NAT maps and the no-endpoint maps
        switch += _delete_elements(service_elements(spec, bool(previous)))
    if new:
        switch += [f"add chain {_T} {svc}", f"flush chain {_T} {svc}", f"add rule {_T} {svc} {_vmap_rule(spec, new)}"]
    elif previous:
        switch += [f"flush chain {_T} {svc}", f"delete chain {_T} {svc}"]
    switch += _add_elements(service_elements(spec, bool(new)))  # adding an existing entry is a no-op
    return [*created, switch, *stale]


def render_update(spec: ServiceSpec, previous: Sequence[Endpoint], new: Sequence[Endpoint], *,
                  commands_max: int = COMMANDS_TEXT_MAX) -> list[str]:
    """Transactions moving `spec` from `previous` to `new` endpoints, touching only its own entries.

    Normally one transaction (kube-proxy's partial sync). If that is too big for one
    transaction, it is cut between chains, never inside the switch: clients see the Service
    change at once.
    """
    return pack(_update_units(spec, previous, new), commands_max)


def render_sync(changes: Mapping[ServiceSpec, Change], *, commands_max: int = COMMANDS_TEXT_MAX) -> list[str]:
    """One sync's changes, across Services, in as few transactions as fit (one, unless huge).

    kube-proxy's nftables mode writes every change of a sync period in one transaction, not
    one per Service; a transaction is cut only between whole units (see render_update).
    """
    units = [unit for spec, (previous, new) in changes.items() for unit in _update_units(spec, previous, new)]
    return pack(units, commands_max)


# ---------------------------------------------------------------------------------------
# The front end


class KernelNftables(KernelFrontend):
    """kube-proxy's nftables mode, applied with nft in lbbench's private namespace."""

    name = "kernel-nftables"
    tool = "nft"

    def make_applier(self, directory: Path | None) -> RulesApplier:
        folder = directory / "nftables" if directory is not None else None
        return RulesApplier(self.supervisor, folder, "nft", ["-f"], ".nft", "nft")

    def check(self, services: Sequence[ServiceSpec]) -> None:
        _check(services)

    def render_full(self, endpoints: Mapping[str, Sequence[Endpoint]]) -> list[str]:
        if real_root():  # nft enlarges its own netlink buffer: every Service in one transaction
            return render_start(self.plan.services, endpoints, commands_max=UNLIMITED)
        return render_start(self.plan.services, endpoints)

    def render_sync(self, changes: Mapping[ServiceSpec, Change],
                    proposed: Mapping[str, Sequence[Endpoint]]) -> list[str]:
        return render_sync(changes, commands_max=UNLIMITED if real_root() else COMMANDS_TEXT_MAX)

    def render_stop(self) -> str:
        return f"delete table {FAMILY} {TABLE}\n"
