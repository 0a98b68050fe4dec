"""Services and their Endpoints as the data plane sees them (the Kubernetes objects' shape)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from lbbench.model.addresses import HostPort

ServiceType = Literal["ClusterIP", "NodePort", "LoadBalancer"]


@dataclass(frozen=True)
class Endpoint:
    """One pod behind a Service: an entry of its EndpointSlice, with the slice's conditions.

    A terminating pod stays listed (ready=False, terminating=True) while it may still serve
    (serving = its readiness probe still passes), as Kubernetes does since 1.26.
    """

    pod: str
    ip: str
    port: int
    node: str = ""
    ready: bool = True
    serving: bool = True
    terminating: bool = False

    @property
    def addr(self) -> HostPort:
        return HostPort(self.ip, self.port)


@dataclass(frozen=True)
class ServiceSpec:
    """A Service as the data plane sees it: its virtual addresses and its target port."""

    name: str
    namespace: str
    type: ServiceType
    cluster_ip: str
    port: int
    target_port: int
    node_port: int | None = None  # NodePort and LoadBalancer
    node_ips: tuple[str, ...] = ()  # every node's IP, for NodePort
    lb_ip: str | None = None  # LoadBalancer external address (listens on `port`)

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def dns_name(self) -> str:
        return f"{self.name}.{self.namespace}.svc.cluster.local"


@dataclass(frozen=True)
class IngressRule:
    host: str  # "*" matches any Host header
    path: str  # path prefix
    service: str  # "namespace/name" key of a ServiceSpec


def usable_endpoints(eps: tuple[Endpoint, ...], terminating_fallback: bool) -> tuple[Endpoint, ...]:
    """The endpoints a data plane sends new connections to: the ready ones; with none ready and
    `terminating_fallback`, the serving terminating ones (kube-proxy's KEP-1669 fallback, GA in 1.28)."""
    ready = tuple(e for e in eps if e.ready)
    if ready or not terminating_fallback:
        return ready
    return tuple(e for e in eps if e.serving and e.terminating)
