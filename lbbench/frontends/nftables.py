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
:func:`lbbench.frontends.dnat.forwarder_plan`) and are DNATed by the NodePort rules.

Every update is one ``nft -f`` transaction: the maps are flushed and refilled (kube-proxy
rebuilds them on every sync too), the updated Service's chains are rewritten and its stale
endpoint chains deleted. Each applied file is kept, with its apply time, under
``artifacts_dir/nftables``. Rules are written only inside lbbench's private namespace.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import re
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from lbbench.errors import UserError
from lbbench.frontends.base import Endpoint, Entrypoint, Frontend, FrontendPlan, ServiceSpec, ServiceType
from lbbench.frontends.dnat import (
    ForwarderProcess,
    entrypoint_of,
    forwarder_plan,
    node_port_addrs,
    validate_service,
)
from lbbench.netns import find_tool, in_private_netns, netns_unavailable_reason
from lbbench.procs import Supervisor

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


@dataclass(frozen=True)
class _Elements:
    service_ips: list[str]
    service_nodeports: list[str]
    no_endpoint_services: list[str]
    no_endpoint_nodeports: list[str]


def _elements(services: Sequence[ServiceSpec], endpoints: Mapping[str, Sequence[Endpoint]]) -> _Elements:
    out = _Elements([], [], [], [])
    for spec in services:
        target = f"goto {service_chain(spec)}"
        np = spec.node_port if node_port_addrs(spec) else None
        if endpoints.get(spec.key):
            out.service_ips.append(f"{spec.cluster_ip} . tcp . {spec.port} : {target}")
            if np is not None:
                out.service_nodeports.append(f"tcp . {np} : {target}")
        else:
            comment = f'comment "{spec.key}:p{spec.port}"'
            key = f"{spec.cluster_ip} . tcp . {spec.port}"
            out.no_endpoint_services.append(f"{key} {comment} : goto reject-chain")
            if np is not None:
                out.no_endpoint_nodeports.append(f"tcp . {np} {comment} : goto reject-chain")
    return out


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


def render_ruleset(services: Sequence[ServiceSpec], endpoints: Mapping[str, Sequence[Endpoint]]) -> str:
    """The whole ``table ip lbbench`` for these Services and Endpoints (deterministic)."""
    for spec in services:
        validate_service(spec)
        check_names(spec)
    el = _elements(services, endpoints)
    out = [f"table {FAMILY} {TABLE} {{", '\tcomment "lbbench: kube-proxy nftables-mode layout"']
    for name, ctype, hook, prio, rule in _BASE_CHAINS:
        out += _chain_block(name, [f"type {ctype} hook {hook} priority {prio}; policy accept;", rule])
    node_ips = nodeport_ips(services)
    out += ["\tset nodeport-ips {", "\t\ttype ipv4_addr", '\t\tcomment "IPs that accept NodePort traffic"']
    if node_ips:
        out.append("\t\telements = { " + ", ".join(node_ips) + " }")
    out += ["\t}", ""]
    out += _map_block("no-endpoint-services", _SERVICE_KEY,
                      "vmap to drop or reject packets to services with no endpoints", el.no_endpoint_services)
    out += _map_block("no-endpoint-nodeports", _NODEPORT_KEY,
                      "vmap to drop or reject packets to service nodeports with no endpoints",
                      el.no_endpoint_nodeports)
    out += _chain_block("reject-chain", [
        'comment "helper for @no-endpoint-services / @no-endpoint-nodeports"', "reject"])
    out += _chain_block("service-endpoints-check", [
        "ip daddr . meta l4proto . th dport vmap @no-endpoint-services",
        "ip daddr @nodeport-ips meta l4proto . th dport vmap @no-endpoint-nodeports"])
    out += _map_block("service-ips", _SERVICE_KEY, "ClusterIP traffic",
                      el.service_ips)
    out += _map_block("service-nodeports", _NODEPORT_KEY, "NodePort traffic", el.service_nodeports)
    out += _chain_block("services", [
        "ip daddr . meta l4proto . th dport vmap @service-ips",
        "ip daddr @nodeport-ips meta l4proto . th dport vmap @service-nodeports"])
    for spec in services:
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


def render_full_apply(services: Sequence[ServiceSpec], endpoints: Mapping[str, Sequence[Endpoint]]) -> str:
    """Replace the table atomically (the add+delete makes the delete safe when it is absent)."""
    replace = f"add table {FAMILY} {TABLE}\ndelete table {FAMILY} {TABLE}\n"
    return replace + render_ruleset(services, endpoints)


def render_update(services: Sequence[ServiceSpec], endpoints: Mapping[str, Sequence[Endpoint]],
                  spec: ServiceSpec, previous: Sequence[Endpoint]) -> str:
    """One transaction moving `spec` from `previous` to ``endpoints[spec.key]``.

    Order matters: nothing may reference a chain when it is deleted, so the maps and the
    Service chain are flushed before stale chains go.
    """
    t = f"{FAMILY} {TABLE}"
    new = list(endpoints.get(spec.key, ()))
    svc = service_chain(spec)
    lines = [f"flush map {t} {m}" for m in
             ("service-ips", "service-nodeports", "no-endpoint-services", "no-endpoint-nodeports")]
    if new:
        lines += [f"add chain {t} {svc}", f"flush chain {t} {svc}"]
        for ep in _unique_endpoints(new):
            chain = endpoint_chain(spec, ep)
            lines += [f"add chain {t} {chain}", f"flush chain {t} {chain}",
                      f"add rule {t} {chain} {_dnat_rule(ep)}"]
        lines.append(f"add rule {t} {svc} {_vmap_rule(spec, new)}")
    elif previous:
        lines += [f"flush chain {t} {svc}", f"delete chain {t} {svc}"]
    keep = {endpoint_chain(spec, ep) for ep in new}
    for ep in _unique_endpoints(previous):
        chain = endpoint_chain(spec, ep)
        if chain not in keep:
            lines += [f"flush chain {t} {chain}", f"delete chain {t} {chain}"]
    el = _elements(services, endpoints)
    for name, elements in (("service-ips", el.service_ips), ("service-nodeports", el.service_nodeports),
                           ("no-endpoint-services", el.no_endpoint_services),
                           ("no-endpoint-nodeports", el.no_endpoint_nodeports)):
        if elements:
            lines.append(f"add element {t} {name} {{ " + ", ".join(elements) + " }")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------
# Applying


class RulesApplier:
    """Runs a rules loader (`nft -f FILE`, `iptables-restore FILE`) through the supervisor;
    keeps every applied file, with its apply time, and counts applies."""

    def __init__(self, supervisor: Supervisor, directory: Path | None, tool: str, args: Sequence[str],
                 suffix: str, prefix: str) -> None:
        path = find_tool(tool)
        if path is None:
            raise UserError(f"{tool} is not installed")
        self.argv = [path, *args]
        self.suffix = suffix
        self.prefix = prefix  # counter names: nft_applies_total, iptables_applies_total
        self.supervisor = supervisor
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if directory is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="lbbench-rules-")
            directory = Path(self._tmp.name)
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.applies = 0
        self.total_s = 0.0
        self.last_s = 0.0
        self.max_s = 0.0
        self._lock = asyncio.Lock()

    async def apply(self, text: str, reason: str) -> float:
        """Apply one transaction; returns its duration. Raises RuntimeError if the tool refuses it."""
        async with self._lock:  # one at a time, in call order: each rebuilds from the latest state
            seq = self.applies + 1
            path = self.directory / f"{seq:04d}{self.suffix}"
            path.write_text(f"# lbbench apply #{seq}: {reason}\n{text}")
            err_path = self.directory / f"{seq:04d}.err"
            wall = time.time()
            started = time.perf_counter()
            with err_path.open("wb") as err:
                child = self.supervisor.spawn(f"{self.prefix}-{seq}", [*self.argv, str(path)],
                                              stdin=subprocess.DEVNULL, stderr=err)
                rc = await child.wait()
            took = time.perf_counter() - started
            message = err_path.read_text(errors="replace").strip()
            err_path.unlink()
            self._record(seq, path, wall, took, rc, reason)
            if rc != 0:
                raise RuntimeError(f"{' '.join(self.argv)} {path} failed (exit {rc}): {message}")
            self.applies = seq
            self.total_s += took
            self.last_s = took
            self.max_s = max(self.max_s, took)
            return took

    def _record(self, seq: int, path: Path, wall: float, took: float, rc: int, reason: str) -> None:
        entry = {"seq": seq, "file": path.name, "applied_unix_s": round(wall, 6),
                 "apply_ms": round(took * 1e3, 3), "exit_status": rc, "reason": reason}
        with (self.directory / "applies.jsonl").open("a") as f:
            f.write(json.dumps(entry) + "\n")

    def counters(self) -> dict[str, float]:
        p = self.prefix
        return {f"{p}_applies_total": self.applies, f"{p}_apply_seconds_total": self.total_s,
                f"{p}_apply_last_ms": self.last_s * 1e3, f"{p}_apply_max_ms": self.max_s * 1e3}

    def close(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None


# ---------------------------------------------------------------------------------------
# The front end


class KernelNftables(Frontend):
    """kube-proxy's nftables mode, applied with nft in lbbench's private namespace."""

    name = "kernel-nftables"
    layer = "l4"
    tool = "nft"

    @classmethod
    def unavailable_reason(cls) -> str | None:
        if find_tool(cls.tool) is None:
            return f"{cls.tool} is not installed"
        return None if in_private_netns() else netns_unavailable_reason()

    def __init__(self, plan: FrontendPlan, supervisor: Supervisor) -> None:
        super().__init__(plan, supervisor)
        self.services = {s.key: s for s in plan.services}
        self.endpoints: dict[str, tuple[Endpoint, ...]] = {s.key: () for s in plan.services}
        self.applier: RulesApplier | None = None
        self.lb_hop: ForwarderProcess | None = None

    # What differs between the kernel modes: the loader, and the text of each transaction.
    def make_applier(self, directory: Path | None) -> RulesApplier:
        folder = directory / "nftables" if directory is not None else None
        return RulesApplier(self.supervisor, folder, "nft", ["-f"], ".nft", "nft")

    def render_start(self) -> str:
        return render_full_apply(list(self.plan.services), self.endpoints)

    def render_update(self, spec: ServiceSpec, previous: Sequence[Endpoint],
                      proposed: Mapping[str, Sequence[Endpoint]]) -> str:
        return render_update(list(self.plan.services), proposed, spec, previous)

    def render_stop(self) -> str:
        return f"delete table {FAMILY} {TABLE}\n"

    async def start(self) -> None:
        if not (self.plan.in_netns and in_private_netns()):
            raise UserError(f"{self.name} writes netfilter rules only inside lbbench's private network "
                            "namespace (run through lbbench.netns.netns_argv); refusing to touch the host's")
        for spec in self.plan.services:
            validate_service(spec)
            check_names(spec)
        self.applier = self.make_applier(self.plan.artifacts_dir)
        await self.applier.apply(self.render_start(), "start: no endpoints yet")
        lb_plan = forwarder_plan(list(self.plan.services), "random", self.plan.seed, include_cluster=False)
        if lb_plan.listeners:
            self.lb_hop = ForwarderProcess(self.supervisor, lb_plan, f"{self.name}-lb")
            await self.lb_hop.start()

    async def update_endpoints(self, service_key: str, endpoints: tuple[Endpoint, ...]) -> None:
        spec = self.services.get(service_key)
        if spec is None:
            raise ValueError(f"unknown service {service_key!r}")
        if self.applier is None:
            raise RuntimeError(f"{self.name} is not started")
        previous = self.endpoints[service_key]
        proposed = {**self.endpoints, service_key: tuple(endpoints)}
        await self.applier.apply(self.render_update(spec, previous, proposed),
                                 f"endpoints {service_key}: {len(endpoints)}")
        self.endpoints = proposed

    async def stop(self) -> None:
        hop, self.lb_hop = self.lb_hop, None
        if hop is not None:
            await hop.stop()
        applier, self.applier = self.applier, None
        if applier is not None:
            with contextlib.suppress(RuntimeError):
                await applier.apply(self.render_stop(), "stop")
            applier.close()

    def entrypoint(self, service_key: str, via: ServiceType = "ClusterIP") -> Entrypoint:
        spec = self.services.get(service_key)
        if spec is None:
            raise ValueError(f"unknown service {service_key!r}")
        return entrypoint_of(spec, via)

    async def counters(self) -> dict[str, float]:
        out = self.applier.counters() if self.applier is not None else {}
        if self.lb_hop is not None:
            out.update({f"lb_{k}": v for k, v in (await self.lb_hop.counters()).items()})
        return out

    def pids(self) -> list[int]:
        # The kernel's DNAT work is charged to the clients' and pods' processes (softirq);
        # only the cloud-LB hop is a process of ours.
        pid = self.lb_hop.pid if self.lb_hop is not None else None
        return [pid] if pid is not None else []
