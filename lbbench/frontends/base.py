"""The one small interface every front end implements.

A front end is started with a :class:`FrontendPlan` (what to serve: Services with their
addresses, Ingress rules, proxy settings), receives Endpoints updates from the controller
(after the sync delay, as kube-proxy or an ingress controller would), is stopped, and
reports its own counters and process ids (for CPU accounting).

Data crossing this boundary is plain frozen dataclasses; nothing here knows about the
controller or the load generator.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

from lbbench.netaddr import HostPort
from lbbench.procs import Supervisor

ServiceType = Literal["ClusterIP", "NodePort", "LoadBalancer"]
Balance = Literal["round-robin", "random", "least-conn", "p2c", "peak-ewma"]


@dataclass(frozen=True)
class Endpoint:
    """One ready pod behind a Service (an entry of the Endpoints object)."""

    pod: str
    ip: str
    port: int
    node: str = ""

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


@dataclass(frozen=True)
class HealthCheck:
    interval_s: float = 0.5
    timeout_s: float = 1.0
    fall: int = 2
    rise: int = 1
    path: str = "/healthz"


@dataclass(frozen=True)
class ProxySettings:
    """Settings of a queueing L7 proxy; reference proxies map them to their closest knobs."""

    maxconn: int = 1  # requests in flight per backend (0 = unlimited)
    max_queue: int = 10_000  # central FIFO bound; beyond it: 503 at once
    queue_timeout_s: float = 5.0  # waiting longer than this: 503
    balance: Balance = "round-robin"
    retries: int = 3  # connect failures retried on another backend
    retry_idempotent: bool = True  # also retry GET/HEAD reset before any response byte
    eject_after: int = 3  # consecutive failures -> passive ejection
    connect_timeout_s: float = 1.0
    server_timeout_s: float = 30.0
    client_timeout_s: float = 30.0
    health: HealthCheck = HealthCheck()


@dataclass(frozen=True)
class FrontendPlan:
    """What a front end must serve in one phase of a run."""

    services: tuple[ServiceSpec, ...]
    ingress_ip: str = "127.98.0.1"  # where L7 front ends listen
    ingress_port: int = 8080
    ingress_rules: tuple[IngressRule, ...] = ()
    proxy: ProxySettings = ProxySettings()
    seed: int = 0
    artifacts_dir: Path | None = None  # rendered configs / rulesets are saved here
    in_netns: bool = False  # True inside lbbench's private user+net namespace


@dataclass(frozen=True)
class Entrypoint:
    """Where a client should connect to reach a Service (or the Ingress) through this front end."""

    addr: HostPort
    host_header: str | None = None


class Frontend(abc.ABC):
    """Start on a plan, take Endpoints updates, stop; report counters and pids."""

    name: ClassVar[str]
    layer: ClassVar[Literal["l4", "l7"]]

    @classmethod
    def unavailable_reason(cls) -> str | None:
        """None when this front end can run here, else why not (shown by doctor and run)."""
        return None

    def __init__(self, plan: FrontendPlan, supervisor: Supervisor) -> None:
        self.plan = plan
        self.supervisor = supervisor

    @abc.abstractmethod
    async def start(self) -> None:
        """Bring the data plane up, with empty Endpoints; return when it accepts connections."""

    @abc.abstractmethod
    async def update_endpoints(self, service_key: str, endpoints: tuple[Endpoint, ...]) -> None:
        """Apply a synced Endpoints update for one Service (replaces its previous list)."""

    @abc.abstractmethod
    async def stop(self) -> None:
        """Tear down; idempotent."""

    @abc.abstractmethod
    def entrypoint(self, service_key: str, via: ServiceType = "ClusterIP") -> Entrypoint:
        """Address a client uses for this Service: ClusterIP, a node's NodePort, or the LB IP.

        L7 front ends return the Ingress address with the Host header that routes to it.
        """

    async def counters(self) -> dict[str, float]:
        """Front-end counters (connections, retries, queue length...). Empty if none."""
        return {}

    def pids(self) -> list[int]:
        """Processes whose CPU time is this front end's (children included by the caller)."""
        return []
