"""One phase of an experiment: a fresh cluster, one front end, the seeded load, the timeline.

Phase steps: start the front end and the cluster, wait until every pod is ready and the
front end has the synced Endpoints, warm up, then start the load at t=0 and fire the
`[[events]]` at their offsets; sample the front end's counters every 100 ms; stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lbbench.cluster.controller import Controller
from lbbench.cluster.dns import ClusterDns, aresolve_a
from lbbench.cluster.events import EventLog, LoggedEvent
from lbbench.cluster.netfaults import NetworkFaults
from lbbench.cluster.network_events import NetworkEvents
from lbbench.cluster.services import offered_capacity_rps, service_specs
from lbbench.config.parse import parse_template
from lbbench.config.reader import Table
from lbbench.config.schema import Config, Event
from lbbench.frontends.base import BackendHealth, Frontend, FrontendPlan
from lbbench.frontends.kernel.applier import RulesApplier
from lbbench.load.generator import LoadGenerator, LoadResult
from lbbench.load.spec import LoadSpec
from lbbench.model.addresses import HostPort, parse_hostport
from lbbench.model.service import ServiceSpec, ServiceType
from lbbench.run.zeroload import ZeroLoad, measure_zero_load, measure_zero_load_in
from lbbench.system.hoststat import read_cpu_ticks, steal_fraction
from lbbench.system.procs import Supervisor
from lbbench.system.proctree import tree_cpu_s
from lbbench.system.timer import PreciseTimer

SAMPLE_PERIOD_S = 0.1


@dataclass(frozen=True)
class PhaseKey:
    frontend: str
    rate_rps: float
    repeat: int
    via: str = ""  # the access path in a `via` sweep ("Ingress" for an L7 front end); "" otherwise

    @property
    def series(self) -> str:
        """The name the results use for this phase's front end: in a `via` sweep, one per access path."""
        return f"{self.frontend} via {self.via}" if self.via else self.frontend

    @property
    def label(self) -> str:
        return f"{self.series} @ {self.rate_rps:g} rps #{self.repeat}"

    def access_path(self, config: Config) -> ServiceType:
        """The Service type the load reaches: this phase's path in a sweep, else `[load] via`."""
        return next((v for v in config.load.vias if v == self.via), config.load.via)


@dataclass
class PhaseRecord:
    """Everything one phase measured: plain data for results.py."""

    key: PhaseKey
    target: str = ""
    load: LoadResult | None = None
    events: list[LoggedEvent] = field(default_factory=list)
    samples: list[dict[str, float]] = field(default_factory=list)
    cpu_s: dict[str, float] = field(default_factory=dict)
    counters: dict[str, float] = field(default_factory=dict)
    artifacts: Path | None = None
    zero_load: ZeroLoad | None = None
    complete: bool = False
    error: str | None = None


class CpuMeter:
    """Last-seen CPU seconds per process, so killed pods still count up to their last sample."""

    def __init__(self) -> None:
        self.last: dict[tuple[str, int], float] = {}

    def sample(self, role: str, pids: list[int], children: bool = False) -> None:
        for pid in pids:
            if (total := tree_cpu_s(pid, children=children)) is not None:
                self.last[(role, pid)] = total

    def totals(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for (role, _), v in self.last.items():
            out[role] = out.get(role, 0.0) + v
        return out


def load_spec(config: Config, fe: Frontend, rate_rps: float, via: ServiceType) -> tuple[LoadSpec, str]:
    lc = config.load
    ep = fe.entrypoint(lc.service, via)
    spec = LoadSpec(
        target=ep.addr, path=lc.path, host_header=ep.host_header, rate_rps=rate_rps,
        duration_s=config.run.duration_s, arrivals=lc.arrivals, steps=lc.steps, connections=lc.connections,
        workers=lc.workers, closed_loop_users=lc.closed_loop_users, think_time_s=lc.think_time_s,
        connect_timeout_s=lc.connect_timeout_s, timeout_s=lc.timeout_s, seed=config.run.seed,
        record_rows=lc.record_rows,
    )
    return spec, f"{ep.addr}" + (f" (Host: {ep.host_header})" if ep.host_header else "")


def lb_dns_name(svc: ServiceSpec) -> str:
    return f"{svc.name}.{svc.namespace}.lb.cluster.local"


async def resolved_load_spec(config: Config, fe: Frontend, plan: FrontendPlan, dns: tuple[ClusterDns, HostPort],
                             rate_rps: float, log: EventLog, via: ServiceType) -> tuple[LoadSpec, str]:
    """The load spec, with a DNAT target reached as a client would: by its cluster DNS name."""
    spec, label = load_spec(config, fe, rate_rps, via)
    svc = next(s for s in plan.services if s.key == config.load.service)
    name = {"ClusterIP": svc.dns_name, "LoadBalancer": lb_dns_name(svc)}.get(via)
    if fe.layer == "l4" and name is not None:
        ip = await aresolve_a(name, dns[1], 1.0)
        log.log("dns_resolved", name, ip)
        if ip != spec.target.host:
            raise RuntimeError(f"cluster DNS answered {ip} for {name}, the front end serves {spec.target.host}")
        label = f"{name} -> {label}"
    return spec, label


def phase_rates(config: Config) -> tuple[float, ...]:
    if config.load.rates_rps:
        return config.load.rates_rps
    capacity = offered_capacity_rps(config, config.load.service)
    return tuple(round(u * capacity, 3) for u in config.load.utilisations)


async def apply_event(config: Config, controller: Controller, ev: Event, index: int,
                      network: NetworkEvents | None = None) -> None:
    """Fire one timeline event against the live cluster (network events through `network`)."""
    _kind, _, name = ev.target.partition("/")
    controller.log.log("event", ev.target, ev.action)
    net = network or NetworkEvents(controller, None, "no network namespace given")
    if ev.action == "scale":
        await controller.scale(ev.target, ev.replicas or 0)
        return
    if ev.action in ("node_down", "partition"):
        node = int(name.rsplit("-", 1)[1])
        await (net.node_down(node) if ev.action == "node_down" else net.partition(node, ev.duration_s))
        return
    if ev.action == "packet_loss":
        await net.packet_loss(ev.target, ev.index, ev.percent, ev.duration_s)
        return
    if ev.action == "pod_unreachable":
        await net.pod_unreachable(ev.target, ev.index, ev.duration_s)
        return
    if ev.action == "rolling_update":
        table = Table(config.path, f"events[{index}].template", dict(ev.template))
        template = parse_template(table, base=controller.templates[ev.target])
        await controller.rolling_update(ev.target, template)
        return
    for pod in controller.resolve(ev.target, ev.index):
        if ev.action == "kill_pod":
            await controller.kill_pod(pod)
        elif ev.action == "delete_pod":
            await controller.delete_pod(pod)
        elif ev.action == "slow_pod":
            controller.set_faults(pod, slow_factor=ev.slow_factor)
        elif ev.action == "fail_pod":
            controller.set_faults(pod, error_rate=ev.error_rate)
        elif ev.action == "unready_pod":
            controller.set_faults(pod, ready=False)
        elif ev.action == "recover_pod":
            controller.set_faults(pod, ready=True, error_rate=0.0, slow_factor=1.0)


class Phase:
    """One front end under the load: bring up, aim, measure, tear down. `run` reads as those steps."""

    def __init__(self, config: Config, key: PhaseKey, fe_class: type[Frontend], artifacts: Path,
                 in_netns: bool, on_progress: Any = None, no_network_faults: str | None = None) -> None:
        self.config = config
        self.key = key
        self.fe_class = fe_class
        self.artifacts = artifacts
        self.in_netns = in_netns
        self.on_progress = on_progress
        self.no_network_faults = no_network_faults  # why nft fault rules cannot be written, if they cannot
        self.record = PhaseRecord(key, artifacts=artifacts)
        self.generator: LoadGenerator | None = None
        self.controller: Controller | None = None
        self.network: NetworkEvents | None = None
        self._stopping = False
        self.dns: tuple[ClusterDns, HostPort] | None = None
        self.frontend: Frontend | None = None
        self.log = EventLog()
        self.cpu = CpuMeter()
        self._tasks: list[asyncio.Task[None]] = []
        # The sampler also stops on this flag, not on cancellation alone: Python 3.11's wait_for (under the
        # front ends' control requests) drops a cancellation that races a reply, and the sampler then ran on
        # while the tear-down waited for it forever (seen on a loaded machine).
        self._sampling = True

    def request_stop(self) -> None:
        self._stopping = True
        if self.generator is not None:
            self.generator.request_stop()

    async def run(self) -> PhaseRecord:
        sup = Supervisor()  # every process of this phase, killed at the end whatever happens
        try:
            plan = await self._bring_up(sup)
            spec = await self._aim(plan)
            await self._measure(spec)
        except Exception as e:  # a phase failing must not lose the other phases
            self.record.error = f"{type(e).__name__}: {e}"
            self.log.log("phase_error", self.key.frontend, self.record.error)
        finally:
            await self._tear_down(sup)
        return self.record

    async def _bring_up(self, sup: Supervisor) -> FrontendPlan:
        """Front end first (it subscribes to Endpoints), then DNS and the cluster, until Endpoints are synced."""
        plan = self._plan()
        fe = self.frontend = self.fe_class(plan, sup)
        fe.health_listener = self._log_health
        controller = self.controller = Controller(self.config, sup, self.log)
        faults = None
        if self.no_network_faults is None:  # nft in this run's own namespace; each file kept with its time
            faults = NetworkFaults(RulesApplier(sup, self.artifacts / "netfaults", "nft", ["-f"], ".nft",
                                                "netfault").apply)
        self.network = NetworkEvents(controller, faults, self.no_network_faults)
        await fe.start()
        controller.subscribers.append(lambda key, eps: fe.update_endpoints(key, fe.programmed(eps)))
        await self._start_dns(plan, self.log)
        await controller.start()
        await controller.wait_synced()
        return plan

    async def _aim(self, plan: FrontendPlan) -> LoadSpec:
        """Where the load goes (as a client finds it), and what that path costs at zero load."""
        assert self.frontend is not None and self.dns is not None
        spec, self.record.target = await resolved_load_spec(self.config, self.frontend, plan, self.dns,
                                                           self.key.rate_rps, self.log,
                                                           self.key.access_path(self.config))
        wrap = self.frontend.client_wrap()
        keepalive = spec.connections.kind == "keepalive"
        zero = self.record.zero_load = await (
            measure_zero_load_in(wrap, spec.target, spec.path, spec.host_header, keepalive) if wrap else
            measure_zero_load(spec.target, spec.path, spec.host_header, keepalive))
        self.log.log("zero_load_measured", self.record.target,
                     f"overhead_p50_ms={(zero['overhead_p50_s'] or 0) * 1e3:.3f}")
        return spec

    async def _measure(self, spec: LoadSpec) -> None:
        """The load from t=0, the timeline and the sampler beside it, until the schedule is done."""
        assert self.frontend is not None and self.controller is not None
        gen = self.generator = LoadGenerator(spec, self.frontend.client_wrap())
        await gen.prepare()  # workers up and holding their share of the schedule
        t0 = time.monotonic() + self.config.run.warmup_s + 0.1
        await gen.start(t0)
        self.log.rebase(t0)
        self.log.log("load_started", self.record.target, f"rate={self.key.rate_rps:g}", at_s=0.0)
        self._tasks.append(asyncio.create_task(self._timeline(self.controller, t0)))
        self._tasks.append(asyncio.create_task(self._sample(self.frontend, self.controller, self.cpu, t0)))
        if self._stopping:
            gen.request_stop()
        self.record.load = await gen.result()
        self.log.log("load_finished", self.record.target)
        self.record.complete = self.record.load.complete and not self._stopping
        self.record.counters = await self.frontend.counters()

    async def _tear_down(self, sup: Supervisor) -> None:
        """Stop the watchers and the load, count CPU, then stop everything in reverse order of start."""
        self._sampling = False
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.generator is not None:
            await self.generator.aclose()
        self._count_cpu()
        if self.network is not None:
            try:
                await self.network.stop()
            except Exception as e:  # logged; the namespace, and its rules, die with the run anyway
                self.log.log("network_fault_error", "stop", f"{type(e).__name__}: {str(e)[:300]}")
        if self.controller is not None:
            await self.controller.stop()
        if self.frontend is not None:
            with contextlib.suppress(Exception):
                await self.frontend.stop()
        if self.dns is not None:
            await self.dns[0].stop()
        await sup.aclose()
        self.record.events = list(self.log.events)

    def _count_cpu(self) -> None:
        self.record.cpu_s = self.cpu.totals()
        if self.record.load is not None:
            self.record.cpu_s["generator"] = sum(self.record.load.worker_cpu_s)

    def _log_health(self, change: BackendHealth) -> None:
        """The front end's own checks marked a backend down or up: logged at the moment it knew."""
        self.log.log(f"backend_{change.state}", change.backend, change.detail,
                     at_s=change.at_monotonic_s - self.log.t0)

    async def _start_dns(self, plan: FrontendPlan, log: EventLog) -> tuple[ClusterDns, HostPort]:
        """The cluster DNS: <svc>.<ns>.svc.cluster.local -> ClusterIP, LoadBalancer names -> external IP."""
        server = ClusterDns()
        wanted = parse_hostport(self.config.cluster.dns)
        try:
            addr = await server.start(wanted)
        except OSError:  # taken (another run?): any free port on the same address
            addr = await server.start(HostPort(wanted.host, 0))
        for svc in plan.services:
            server.set_record(svc.dns_name, svc.cluster_ip)
            if svc.lb_ip is not None:
                server.set_record(lb_dns_name(svc), svc.lb_ip)
        log.log("dns_started", str(addr), f"{len(plan.services)} services")
        self.dns = (server, addr)
        return self.dns

    def _plan(self) -> FrontendPlan:
        c = self.config
        rules = tuple(r for ing in c.ingresses for r in ing.rules)
        self.artifacts.mkdir(parents=True, exist_ok=True)
        return FrontendPlan(
            services=service_specs(c), ingress_ip=c.cluster.ingress_ip, ingress_port=c.cluster.ingress_port,
            ingress_rules=rules, proxy=c.proxy, seed=c.run.seed, artifacts_dir=self.artifacts, in_netns=self.in_netns,
            terminating_fallback=c.run.terminating_fallback,
            socket_lb_reverse=c.cluster.socket_lb_reverse,
        )

    async def _timeline(self, controller: Controller, t0: float) -> None:
        timer = PreciseTimer()
        try:
            due = [(i, ev) for i, ev in enumerate(self.config.events) if ev.at_s < self.config.run.duration_s]
            for i, ev in sorted(due, key=lambda p: p[1].at_s):
                await timer.sleep_until(t0 + ev.at_s)
                asyncio.create_task(self._fire(controller, ev, i))  # noqa: RUF006
        finally:
            timer.close()

    async def _fire(self, controller: Controller, ev: Event, index: int) -> None:
        try:
            await apply_event(self.config, controller, ev, index, self.network)
        except Exception as e:  # an event that cannot be played is a fact of the run, not a crash
            self.log.log("event_failed", ev.target, f"{ev.action}: {type(e).__name__}: {str(e)[:300]}")

    async def _sample(self, fe: Frontend, controller: Controller, cpu: CpuMeter, t0: float) -> None:
        next_at = time.monotonic()
        ticks = read_cpu_ticks()
        while self._sampling:
            counters = await fe.counters()
            key = self.config.load.service
            sample: dict[str, float] = {
                "t_s": time.monotonic() - t0,
                "ready_endpoints": float(sum(e.ready for e in controller.endpoints.get(key, ()))),
                "synced_endpoints": float(sum(e.ready for e in controller.synced.get(key, ()))),
                "queue_len": float(counters.get("queue_len", 0.0)),
                "in_flight": float(counters.get("in_flight_total", 0.0)),
            }
            ticks, before = read_cpu_ticks(), ticks
            steal = steal_fraction(before, ticks)
            if steal is not None:
                sample["host_steal"] = steal
            self.record.samples.append(sample)
            cpu.sample("frontend", fe.pids(), children=True)
            cpu.sample("pods", controller.pod_pids())
            if self.on_progress is not None and self.generator is not None:
                self.on_progress(self, sample)
            next_at += SAMPLE_PERIOD_S
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
