"""The one small interface every front end implements.

A front end is started with a :class:`FrontendPlan` (what to serve: Services with their
addresses, Ingress rules, proxy settings), receives Endpoints updates from the controller
(after the sync delay, as kube-proxy or an ingress controller would), is stopped, and
reports its own counters and process ids (for CPU accounting), and, where it has health
checks of its own and their verdicts can be read, when they mark a backend down or up.

Data crossing this boundary is plain frozen dataclasses; nothing here knows about the
controller or the load generator.
"""

from __future__ import annotations

import abc
import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

from lbbench.model.addresses import HostPort
from lbbench.model.proxy import ProxySettings
from lbbench.model.service import Endpoint, IngressRule, ServiceSpec, ServiceType, usable_endpoints
from lbbench.system.cgroup import cgroup_argv
from lbbench.system.procs import Supervisor


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
    terminating_fallback: bool = True  # DNAT front ends: serving terminating endpoints when none is ready
    socket_lb_reverse: bool = True  # ebpf-socketlb: getpeername() answers the Service address


@dataclass(frozen=True)
class BackendHealth:
    """A front end's own health checks changed their mind about a backend (its Endpoints did not change)."""

    at_monotonic_s: float  # when the front end knew, on time.monotonic(): the machine's clock, in every process
    state: Literal["down", "up"]
    backend: str  # the pod's name (or ip:port)
    detail: str = ""


@dataclass(frozen=True)
class Entrypoint:
    """Where a client should connect to reach a Service (or the Ingress) through this front end."""

    addr: HostPort
    host_header: str | None = None


class Frontend(abc.ABC):
    """Start on a plan, take Endpoints updates, stop; report counters and pids."""

    name: ClassVar[str]
    layer: ClassVar[Literal["l4", "l7"]]
    # kube-proxy's data planes fall back to serving terminating endpoints when none is ready;
    # proxies drain instead: a terminating backend gets no new request, in-flight ones finish.
    falls_back_to_terminating: ClassVar[bool] = False
    # Told whenever the front end's own health checks mark a backend down or up (set by the run; front
    # ends without checks, or whose verdicts cannot be read cheaply, never call it).
    health_listener: Callable[[BackendHealth], None] | None = None

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

    def programmed(self, endpoints: tuple[Endpoint, ...]) -> tuple[Endpoint, ...]:
        """Of a Service's EndpointSlice, the endpoints this front end sends new connections to."""
        fallback = self.falls_back_to_terminating and self.plan.terminating_fallback
        return usable_endpoints(endpoints, fallback)

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

    def report_health(self, change: BackendHealth) -> None:
        if self.health_listener is not None:
            self.health_listener(change)

    async def counters(self) -> dict[str, float]:
        """Front-end counters (connections, retries, queue length...). Empty if none."""
        return {}

    def client_cgroup(self) -> Path | None:
        """The cgroup a client process must join before opening sockets to be served; None: any."""
        return None

    def client_wrap(self) -> Callable[[list[str]], list[str]] | None:
        """How a client process must be started to be served (inside :meth:`client_cgroup`), or None: as is."""
        cg = self.client_cgroup()
        return None if cg is None else functools.partial(cgroup_argv, cg)

    def pids(self) -> list[int]:
        """Processes whose CPU time is this front end's (children included by the caller)."""
        return []
