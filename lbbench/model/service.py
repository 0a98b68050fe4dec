"""Services and their Endpoints as the data plane sees them (the Kubernetes objects' shape)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, fields
from typing import Any, Literal

from lbbench.model.addresses import HostPort, require_loopback

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

    def to_wire(self) -> dict[str, Any]:
        """The Endpoint as it travels in a control message (JSON)."""
        return {"pod": self.pod, "ip": self.ip, "port": self.port, "node": self.node,
                "ready": self.ready, "serving": self.serving, "terminating": self.terminating}

    @classmethod
    def from_wire(cls, item: object) -> Endpoint:
        """An Endpoint from a control message, validated: a loopback IP and a port 1-65535.

        Raises ValueError saying what is wrong: a child must refuse (and say why) rather than
        route to a half-read address.
        """
        if not isinstance(item, dict):
            raise ValueError(f"endpoint must be an object, got {item!r}")
        unknown = set(item) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"endpoint has unknown key {sorted(unknown)[0]!r}")
        pod, ip, port, node = item.get("pod"), item.get("ip"), item.get("port"), item.get("node", "")
        if not isinstance(pod, str) or not isinstance(ip, str) or not isinstance(node, str):
            raise ValueError(f"endpoint needs string pod, ip and node, got {item!r}")
        if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
            raise ValueError(f"endpoint {pod} port {port!r} out of range 1-65535")
        conditions = {k: item.get(k, getattr(cls, k)) for k in ("ready", "serving", "terminating")}
        if not all(isinstance(v, bool) for v in conditions.values()):
            raise ValueError(f"endpoint {pod} conditions ready, serving, terminating must be true or false")
        return cls(pod, require_loopback(ip, f"endpoint {pod} IP"), port, node, **conditions)


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


def endpoints_update(service_key: str, endpoints: Iterable[Endpoint]) -> dict[str, Any]:
    """The control message of one Endpoints sync, the same for every front end's child."""
    return {"service": service_key, "endpoints": [e.to_wire() for e in endpoints]}


def read_endpoints_update(body: object) -> tuple[str, tuple[Endpoint, ...]]:
    """(Service key, Endpoints) of an `endpoints_update` message; ValueError if malformed."""
    if not isinstance(body, dict) or not isinstance(body.get("service"), str):
        raise ValueError("endpoints update must be an object with a string 'service'")
    items = body.get("endpoints")
    if not isinstance(items, list):
        raise ValueError("endpoints must be a list")
    return body["service"], tuple(Endpoint.from_wire(item) for item in items)
