"""Service addresses: ClusterIPs, node IPs and LoadBalancer IPs, fixed by the config alone.

Deterministic, so every phase of a run (and every front end) sees the same addresses.
"""

from __future__ import annotations

from lbbench.config.schema import Config
from lbbench.model.addresses import AddressAllocator
from lbbench.model.service import ServiceSpec


def service_specs(config: Config) -> tuple[ServiceSpec, ...]:
    cluster_ips = AddressAllocator(config.cluster.service_cidr, first_host=1)
    lb_ips = AddressAllocator(config.cluster.lb_cidr, first_host=1)
    for s in config.services:
        if s.cluster_ip:
            cluster_ips.reserve(s.cluster_ip)
    node_ips = tuple(config.cluster.node_ip(n) for n in range(config.cluster.nodes))
    specs = []
    for s in config.services:
        specs.append(ServiceSpec(
            name=s.name, namespace=s.namespace, type=s.type,
            cluster_ip=s.cluster_ip or cluster_ips.allocate(), port=s.port, target_port=s.target_port,
            node_port=s.node_port, node_ips=node_ips if s.type != "ClusterIP" else (),
            lb_ip=lb_ips.allocate() if s.type == "LoadBalancer" else None,
        ))
    return tuple(specs)


def offered_capacity_rps(config: Config, service_key: str) -> float:
    """Requests/s the Service's pods can serve at most: sum of slots / mean service time."""
    svc = config.service(service_key)
    total = 0.0
    for w in config.backing_workloads(svc):
        replicas = config.cluster.nodes if w.kind == "DaemonSet" else w.replicas
        mean = w.template.service.mean_s * w.template.faults.slow_factor
        total += replicas * w.template.slots / mean if mean > 0 else float("inf")
    return total
