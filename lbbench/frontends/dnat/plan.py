"""What the userspace forwarder serves: Service addresses, listeners and endpoint tables.

Pure data, no sockets: shared by userspace-dnat (all listeners) and kernel-nftables /
kernel-iptables (only the cloud balancer's hop, and the Service address rules).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, cast

from lbbench.frontends.base import Entrypoint
from lbbench.model.addresses import HostPort, parse_hostport, require_loopback
from lbbench.model.service import ServiceSpec, ServiceType

Mode = Literal["random", "rr"]
# How N workers share a listener: one listening socket inherited by all, accepted from by whichever
# is free (HAProxy's threads); or a socket each with SO_REUSEPORT, the kernel hashing the 4-tuple.
Accept = Literal["shared", "reuseport"]
ACCEPTS: tuple[Accept, ...] = ("shared", "reuseport")


# ---------------------------------------------------------------------------------------
# Service types -> addresses


def validate_service(spec: ServiceSpec) -> None:
    """Raise ValueError unless every address of `spec` is loopback and its type is complete."""
    require_loopback(spec.cluster_ip, f"service {spec.key} cluster_ip")
    for port, what in ((spec.port, "port"), (spec.target_port, "target_port")):
        if not 1 <= port <= 65535:
            raise ValueError(f"service {spec.key}: {what} {port} out of range 1-65535")
    if spec.type in ("NodePort", "LoadBalancer"):
        if spec.node_port is None or not 1 <= spec.node_port <= 65535:
            raise ValueError(f"service {spec.key} is {spec.type} but has no valid node_port")
        if not spec.node_ips:
            raise ValueError(f"service {spec.key} is {spec.type} but has no node_ips")
        for ip in spec.node_ips:
            require_loopback(ip, f"service {spec.key} node IP")
    if spec.type == "LoadBalancer":
        if spec.lb_ip is None:
            raise ValueError(f"service {spec.key} is LoadBalancer but has no lb_ip")
        require_loopback(spec.lb_ip, f"service {spec.key} lb_ip")


def node_port_addrs(spec: ServiceSpec) -> tuple[HostPort, ...]:
    """Every node's IP at the Service's NodePort (empty for ClusterIP)."""
    if spec.type == "ClusterIP" or spec.node_port is None:
        return ()
    return tuple(HostPort(ip, spec.node_port) for ip in spec.node_ips)


def entrypoint_of(spec: ServiceSpec, via: ServiceType) -> Entrypoint:
    """ClusterIP:port, the first node's IP:NodePort, or the LoadBalancer IP:port."""
    if via == "ClusterIP":
        return Entrypoint(HostPort(spec.cluster_ip, spec.port))
    if via == "NodePort":
        nodes = node_port_addrs(spec)
        if not nodes:
            raise ValueError(f"service {spec.key} is {spec.type}: it has no NodePort")
        return Entrypoint(nodes[0])
    if spec.type != "LoadBalancer" or spec.lb_ip is None:
        raise ValueError(f"service {spec.key} is {spec.type}: it has no LoadBalancer address")
    return Entrypoint(HostPort(spec.lb_ip, spec.port))


def service_entrypoint(services: Mapping[str, ServiceSpec], service_key: str, via: ServiceType) -> Entrypoint:
    """:func:`entrypoint_of` the Service called `service_key` (ValueError if there is none)."""
    spec = services.get(service_key)
    if spec is None:
        raise ValueError(f"unknown service {service_key!r}")
    return entrypoint_of(spec, via)


def lb_table(spec: ServiceSpec) -> str:
    return f"lb:{spec.key}"


# ---------------------------------------------------------------------------------------
# The forwarder's plan (what to listen on, which table each listener uses)


@dataclass(frozen=True)
class Listener:
    addr: HostPort
    table: str  # a Service key, or lb_table(spec) for a LoadBalancer's hop to the nodes


@dataclass(frozen=True)
class ForwarderPlan:
    listeners: tuple[Listener, ...]
    tables: tuple[tuple[str, tuple[HostPort, ...]], ...]  # table -> initial backends
    mode: Mode = "random"
    seed: int = 0
    reuse_port: bool = False  # SO_REUSEPORT: several worker processes share each listener
    listen_fds: tuple[int, ...] = ()  # inherited listening sockets, one per listener (accept "shared")
    loads_fd: int = -1  # with listen_fds: the workers' shared connection counts (see .accept)
    worker: int = 0  # this worker's index, and how many there are
    workers: int = 1

    def to_json(self) -> str:
        return json.dumps({
            "mode": self.mode, "seed": self.seed, "reuse_port": self.reuse_port, "listen_fds": list(self.listen_fds),
            "loads_fd": self.loads_fd, "worker": self.worker, "workers": self.workers,
            "listeners": [{"addr": str(lst.addr), "table": lst.table} for lst in self.listeners],
            "tables": {name: [str(b) for b in backends] for name, backends in self.tables},
        })

    @classmethod
    def from_json(cls, text: str) -> ForwarderPlan:
        raw = json.loads(text)
        mode = raw.get("mode", "random")
        if mode not in ("random", "rr"):
            raise ValueError(f"mode must be 'random' or 'rr', got {mode!r}")
        listeners = tuple(Listener(parse_hostport(x["addr"]), str(x["table"])) for x in raw["listeners"])
        tables = tuple((str(k), tuple(parse_hostport(b) for b in v)) for k, v in raw["tables"].items())
        plan = cls(listeners, tables, cast(Mode, mode), int(raw.get("seed", 0)), bool(raw.get("reuse_port", False)),
                   tuple(int(fd) for fd in raw.get("listen_fds", ())), int(raw.get("loads_fd", -1)),
                   int(raw.get("worker", 0)), int(raw.get("workers", 1)))
        plan.check()
        return plan

    def check(self) -> None:
        names = {name for name, _ in self.tables}
        for lst in self.listeners:
            if lst.table not in names:
                raise ValueError(f"listener {lst.addr} uses unknown table {lst.table!r}")
        addrs = [lst.addr for lst in self.listeners]
        if len(set(addrs)) != len(addrs):
            raise ValueError("two listeners on the same address")
        if self.listen_fds and len(self.listen_fds) != len(self.listeners):
            raise ValueError(f"{len(self.listen_fds)} listening sockets for {len(self.listeners)} listeners")

    def for_worker(self, index: int, workers: int, listen_fds: Sequence[int] = (), loads_fd: int = -1
                   ) -> ForwarderPlan:
        """Worker `index` of `workers`: its own seed (seed + index); listeners shared if several.

        With `listen_fds` (sockets the pool bound and the worker inherits) they are shared as
        they are, accepted least-loaded first by the counts at `loads_fd`; otherwise each worker
        binds its own with SO_REUSEPORT.
        """
        return dataclasses.replace(self, seed=self.seed + index, reuse_port=workers > 1 and not listen_fds,
                                   listen_fds=tuple(listen_fds), loads_fd=loads_fd, worker=index, workers=workers)

    def bound_to(self, bound: Sequence[HostPort]) -> ForwarderPlan:
        """The same plan with each listener at the address it got (port 0 -> the port the kernel chose)."""
        if len(bound) != len(self.listeners):
            raise ValueError(f"{len(bound)} bound addresses for {len(self.listeners)} listeners")
        listeners = tuple(Listener(addr, lst.table) for lst, addr in zip(self.listeners, bound, strict=True))
        return dataclasses.replace(self, listeners=listeners)


def forwarder_plan(services: Sequence[ServiceSpec], mode: Mode, seed: int, *,
                   include_cluster: bool = True) -> ForwarderPlan:
    """Listeners for every Service type: ClusterIP, each node's NodePort, the LB hop.

    The LoadBalancer listener stands for the cloud balancer: it spreads connections over the
    node IP:NodePort pairs (a static table), where the NodePort listeners DNAT again.
    With include_cluster=False only the LoadBalancer hops are planned (kernel-nftables does
    ClusterIP and NodePort in the kernel).
    """
    listeners: list[Listener] = []
    tables: list[tuple[str, tuple[HostPort, ...]]] = []
    for spec in services:
        validate_service(spec)
        if include_cluster:
            tables.append((spec.key, ()))
            listeners.append(Listener(HostPort(spec.cluster_ip, spec.port), spec.key))
            listeners.extend(Listener(addr, spec.key) for addr in node_port_addrs(spec))
        if spec.type == "LoadBalancer" and spec.lb_ip is not None:
            tables.append((lb_table(spec), node_port_addrs(spec)))
            listeners.append(Listener(HostPort(spec.lb_ip, spec.port), lb_table(spec)))
    plan = ForwarderPlan(tuple(listeners), tuple(tables), mode, seed)
    plan.check()
    return plan
