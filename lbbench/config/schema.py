"""The typed config: what a TOML config means once validated (the objects `load_config` returns).

Plain frozen dataclasses in the Kubernetes vocabulary; parse.py builds them and is the only place
that knows TOML. Every key, default and unit is documented in configs/README.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from lbbench.config.scale import ScaleConfig
from lbbench.model.checks import Check
from lbbench.model.faults import Faults
from lbbench.model.load import ConnectionMode, RateStep
from lbbench.model.proxy import ProxySettings
from lbbench.model.service import IngressRule, ServiceType
from lbbench.model.servicetime import ServiceTime

WorkloadKind = Literal["Deployment", "StatefulSet", "DaemonSet"]
ACTIONS = ("kill_pod", "delete_pod", "scale", "slow_pod", "fail_pod", "unready_pod", "recover_pod",
           "node_down", "rolling_update", "partition", "packet_loss", "pod_unreachable")


@dataclass(frozen=True)
class Readiness:
    path: str = "/healthz"
    period_s: float = 0.1
    timeout_s: float = 0.5
    failure_threshold: int = 2
    success_threshold: int = 1
    initial_delay_s: float = 0.0


@dataclass(frozen=True)
class PodTemplate:
    service: ServiceTime = ServiceTime("exp", 0.01)
    slots: int = 1
    burn_cpu: bool = False
    port: int = 8080
    faults: Faults = Faults()
    readiness: Readiness = Readiness()
    pre_stop_delay_s: float = 0.0  # a preStop hook that sleeps: the pod serves on while terminating
    termination_grace_period_s: float = 30.0  # terminationGracePeriodSeconds: then SIGKILL


@dataclass(frozen=True)
class Workload:
    kind: WorkloadKind
    name: str
    namespace: str
    replicas: int  # DaemonSet: ignored (one per node)
    labels: dict[str, str]
    template: PodTemplate

    @property
    def key(self) -> str:
        return f"{self.kind.lower()}/{self.name}"


@dataclass(frozen=True)
class ServiceConfig:
    name: str
    namespace: str
    selector: dict[str, str]
    port: int
    target_port: int
    type: ServiceType = "ClusterIP"
    node_port: int | None = None
    cluster_ip: str | None = None

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class IngressConfig:
    name: str
    namespace: str
    ingress_class: str
    rules: tuple[IngressRule, ...]


@dataclass(frozen=True)
class LoadConfig:
    service: str  # "namespace/name" key
    via: ServiceType = "ClusterIP"  # the first access path (what `k8s render` uses)
    vias: tuple[ServiceType, ...] = ("ClusterIP",)  # every access path: more than one = a `via` sweep
    path: str = "/"
    rates_rps: tuple[float, ...] = ()  # explicit rates (a list = a sweep)
    utilisations: tuple[float, ...] = (0.7,)  # used when no rate is given
    arrivals: Literal["poisson", "constant"] = "poisson"
    connections: ConnectionMode = ConnectionMode("close")
    steps: tuple[RateStep, ...] = ()
    workers: int = 0
    closed_loop_users: int = 0
    think_time_s: float = 0.0
    timeout_s: float = 10.0
    connect_timeout_s: float = 1.0
    record_rows: bool = True


@dataclass(frozen=True)
class Event:
    at_s: float
    action: str
    target: str  # deployment/web, statefulset/db, pod/db-1, node/node-1
    index: int | None = None  # which pod of the workload (sorted by name); None = seeded random
    replicas: int | None = None
    slow_factor: float = 1.0
    error_rate: float = 0.0
    template: dict[str, object] = field(default_factory=dict)
    duration_s: float | None = None  # network faults: heal after this long (None: until the phase ends)
    percent: float = 0.0  # packet_loss: share of packets dropped


@dataclass(frozen=True)
class RunConfig:
    duration_s: float = 20.0
    warmup_s: float = 1.0
    cooldown_s: float = 0.5
    seed: int = 1
    frontends: tuple[str, ...] = ("userspace-dnat", "l7-proxy")
    endpoint_sync_delay_s: float = 1.0
    restart_delay_s: float = 0.5
    node_grace_period_s: float = 40.0  # Kubernetes' node-monitor-grace-period
    terminating_fallback: bool = True  # DNAT front ends use serving terminating endpoints when none is ready
    repeat: int = 1


@dataclass(frozen=True)
class ClusterConfig:
    name: str = "lbbench"
    nodes: int = 1
    namespaces: tuple[str, ...] = ("default",)
    node_ip_base: int = 10  # node n owns 127.(base+n).0.0/16
    service_cidr: str = "127.96.0.0/16"
    lb_cidr: str = "127.97.0.0/16"
    ingress_ip: str = "127.98.0.1"
    ingress_port: int = 8080
    dns: str = "127.53.0.10:5353"
    socket_lb_reverse: bool = True  # ebpf-socketlb: getpeername() answers the Service address, as Cilium's

    def node_network(self, n: int) -> str:
        return f"127.{self.node_ip_base + n}.0.0/16"

    def node_ip(self, n: int) -> str:
        return f"127.{self.node_ip_base + n}.0.1"


@dataclass(frozen=True)
class ReportConfig:
    """[report] slo, [theory] tolerance and [[checks]]: how the results are judged (not measured)."""

    slo_s: float | None = None  # None: SLO_SERVICE_TIMES x the mean service time
    theory_tolerance: float | None = None  # a relative error; None: the theory table has no verdict
    checks: tuple[Check, ...] = ()


@dataclass(frozen=True)
class Config:
    path: str
    cluster: ClusterConfig
    workloads: tuple[Workload, ...]
    services: tuple[ServiceConfig, ...]
    ingresses: tuple[IngressConfig, ...]
    load: LoadConfig
    events: tuple[Event, ...]
    run: RunConfig
    proxy: ProxySettings
    report: ReportConfig = ReportConfig()
    scale: ScaleConfig | None = None  # [scale]: a Service-count sweep instead of the load phases

    @property
    def name(self) -> str:
        return Path(self.path).stem

    def service(self, key: str) -> ServiceConfig:
        return next(s for s in self.services if s.key == key)

    def backing_workloads(self, svc: ServiceConfig) -> list[Workload]:
        return [w for w in self.workloads if w.namespace == svc.namespace and _selects(svc.selector, w.labels)]


def _selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())
