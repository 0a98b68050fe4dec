"""The controller: reconciles workloads into pod processes and Services into Endpoints.

- Deployments: a dead pod is replaced after `restart_delay` by a new pod with a new name
  suffix and a new IP never used before in the run (kube-proxy learns of the change only at
  its next sync, so an IP must never silently come back).
- StatefulSets: stable names web-0..web-N-1, started in order, recreated under the same name
  with a new IP.
- DaemonSets: one pod per node.
- Readiness probes (period, failureThreshold, successThreshold) decide Endpoints membership;
  every change is published to subscribers after `endpoint_sync_delay` (kube-proxy's sync).
- A node that goes down: its pods die, but its kubelet can no longer report, so their
  endpoints stay until `node_grace_period` has passed (the node controller's timeout).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import random
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from lbbench.cluster.events import EventLog
from lbbench.cluster.probe import http_probe
from lbbench.config.schema import Config, PodTemplate, ServiceConfig, Workload
from lbbench.model.addresses import AddressAllocator
from lbbench.model.service import Endpoint
from lbbench.system.control import send
from lbbench.system.procs import Child, Supervisor, lbbench_argv

Subscriber = Callable[[str, tuple[Endpoint, ...]], Awaitable[None]]


@dataclass
class PodState:
    """A live pod: its identity, process and readiness (mutable runtime state)."""

    name: str
    workload: Workload
    template: PodTemplate
    node: int
    ip: str
    port: int
    child: Child | None = None
    ready: bool = False
    terminating: bool = False
    dead: bool = False
    frozen: bool = False  # on a down node: status no longer reported
    evicted: bool = False  # by the node controller after the grace period; its process may still run
    successes: int = 0
    failures: int = 0
    tasks: list[asyncio.Task[None]] = field(default_factory=list)


def synced_detail(eps: tuple[Endpoint, ...]) -> str:
    """events.csv's detail of an Endpoints sync: the ready count, then each pod=ip, a terminating
    one marked [terminating,serving] or [terminating,not-serving]."""
    def one(e: Endpoint) -> str:
        mark = f"[terminating,{'serving' if e.serving else 'not-serving'}]" if e.terminating else ""
        return f"{e.pod}={e.ip}{mark}"

    return f"{sum(e.ready for e in eps)} " + " ".join(one(e) for e in eps)


class Controller:
    def __init__(self, config: Config, supervisor: Supervisor, log: EventLog) -> None:
        self.config = config
        self.sup = supervisor
        self.log = log
        self.rng = random.Random(config.run.seed)
        self.allocators = [AddressAllocator(config.cluster.node_network(n)) for n in range(config.cluster.nodes)]
        self.templates: dict[str, PodTemplate] = {w.key: w.template for w in config.workloads}
        self.desired: dict[str, int] = {w.key: w.replicas for w in config.workloads}
        self.pods: dict[int, PodState] = {}  # by serial: a StatefulSet name can be reused
        self.all_ips: list[str] = []
        self.nodes_down: set[int] = set()
        self.subscribers: list[Subscriber] = []
        self.endpoints: dict[str, tuple[Endpoint, ...]] = {s.key: () for s in config.services}
        self.synced: dict[str, tuple[Endpoint, ...]] = {s.key: () for s in config.services}
        self._bg: set[asyncio.Task[None]] = set()
        self._serial = 0
        self._stopping = False
        self._reconcile_lock = asyncio.Lock()
        self._sync_locks: dict[str, asyncio.Lock] = {}

    # ---- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        for w in self.config.workloads:
            await self._reconcile(w, ordered=w.kind == "StatefulSet")

    async def wait_synced(self, timeout_s: float = 30.0) -> None:
        """Until every desired pod is ready and every Service's synced Endpoints show it."""
        async with asyncio.timeout(timeout_s):
            while not self._all_synced():
                await asyncio.sleep(0.02)

    def _all_synced(self) -> bool:
        live = [p for p in self.pods.values() if not p.dead and not p.terminating]
        want = sum(self._replicas(w) for w in self.config.workloads)
        if len(live) < want or not all(p.ready for p in live):
            return False
        return all(set(self.synced[k]) == set(self._compute(s)) for k, s in self._svc_items())

    async def stop(self) -> None:
        self._stopping = True
        for t in list(self._bg):
            t.cancel()
        for p in self.pods.values():
            for t in p.tasks:
                t.cancel()
        live = [p.child for p in self.pods.values() if p.child is not None and p.child.alive()]
        await asyncio.gather(*(c.stop(2.0) for c in live), return_exceptions=True)

    def pod_pids(self) -> list[int]:
        return [p.child.pid for p in self.pods.values() if p.child is not None]

    # ---- pods ------------------------------------------------------------------------------

    def _replicas(self, w: Workload) -> int:
        if w.kind == "DaemonSet":
            return self.config.cluster.nodes - len(self.nodes_down)
        return self.desired[w.key]

    def _live(self, w: Workload) -> list[PodState]:
        return sorted((p for p in self.pods.values() if p.workload.key == w.key and not p.dead
                       and not p.terminating), key=lambda p: p.name)

    def _pod_name(self, w: Workload, template: PodTemplate, ordinal: int | None) -> str:
        if w.kind == "StatefulSet":
            return f"{w.name}-{ordinal}"
        suffix = "".join(self.rng.choice("bcdfghjklmnpqrstvwxz2456789") for _ in range(5))
        if w.kind == "DaemonSet":
            return f"{w.name}-{suffix}"
        rs = hashlib.sha1(repr(template).encode()).hexdigest()[:8]  # like a ReplicaSet's pod-template-hash
        return f"{w.name}-{rs}-{suffix}"

    def _pick_node(self, w: Workload, taken: set[int]) -> int | None:
        up = [n for n in range(self.config.cluster.nodes) if n not in self.nodes_down]
        if w.kind == "DaemonSet":
            free = [n for n in up if n not in taken]
            return free[0] if free else None
        if not up:
            return None
        load = {n: 0 for n in up}
        for p in self.pods.values():
            if not p.dead and p.node in load:
                load[p.node] += 1
        return min(up, key=lambda n: (load[n], n))

    async def _create_pod(self, w: Workload, ordinal: int | None = None, node: int | None = None) -> PodState | None:
        template = self.templates[w.key]
        node = self._pick_node(w, set()) if node is None else node
        if node is None:
            return None
        ip = self.allocators[node].allocate()
        self.all_ips.append(ip)
        name = self._pod_name(w, template, ordinal)
        self._serial += 1
        pod = PodState(name, w, template, node, ip, template.port)
        f = template.faults
        argv = lbbench_argv(
            "serve", "pod", "--listen", f"{ip}:{template.port}", "--name", name,
            "--service", str(template.service), "--slots", str(template.slots),
            "--seed", str(self.config.run.seed * 1_000_003 + self._serial), "--error-rate", str(f.error_rate),
            "--slow-factor", str(f.slow_factor), "--hang-rate", str(f.hang_rate), "--close-rate", str(f.close_rate),
            *(["--burn-cpu"] if template.burn_cpu else []), *([] if f.ready else ["--unready"]),
        )
        pod.child = self.sup.spawn(f"pod/{name}", argv)
        self.pods[self._serial] = pod
        self.log.log("pod_started", name, f"ip={ip} node=node-{node} pid={pod.child.pid}")
        pod.tasks.append(asyncio.create_task(self._watch_exit(pod)))
        pod.tasks.append(asyncio.create_task(self._probe_loop(pod)))
        return pod

    async def _watch_exit(self, pod: PodState) -> None:
        assert pod.child is not None
        rc = await pod.child.wait()
        pod.child.close_pipes()
        if self._stopping:
            return
        pod.dead = True
        was_terminating = pod.terminating
        self.log.log("pod_deleted" if was_terminating else "pod_died", pod.name, f"exit={rc}")
        if not pod.frozen:
            self._set_ready(pod, False)
            self._endpoints_maybe_changed()  # a terminating pod leaves the slice only now
        if not was_terminating and not pod.frozen:
            self._spawn_bg(self._replace_later(pod.workload))

    async def _replace_later(self, w: Workload) -> None:
        await asyncio.sleep(self.config.run.restart_delay_s)
        await self._reconcile(w)

    async def _reconcile(self, w: Workload, ordered: bool = False) -> None:
        async with self._reconcile_lock:
            if self._stopping:
                return
            live = self._live(w)
            want = self._replicas(w)
            if w.kind == "StatefulSet":
                have = {p.name for p in live}
                for i in range(want):
                    if f"{w.name}-{i}" not in have:
                        pod = await self._create_pod(w, ordinal=i)
                        if ordered and pod is not None:
                            await self._wait_pod_ready(pod)
            elif w.kind == "DaemonSet":
                taken = {p.node for p in live}
                for _ in range(want - len(live)):
                    node = self._pick_node(w, taken)
                    if node is None:
                        break
                    taken.add(node)
                    await self._create_pod(w, node=node)
            else:
                for _ in range(want - len(live)):
                    await self._create_pod(w)
            for p in reversed(live[want:]):  # scale down: the last by name goes first
                await self.delete_pod(p, replace=False)

    async def _wait_pod_ready(self, pod: PodState, timeout_s: float = 30.0) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                while not pod.ready and not pod.dead:
                    await asyncio.sleep(0.01)

    # ---- readiness and endpoints -----------------------------------------------------------

    async def _probe_loop(self, pod: PodState) -> None:
        r = pod.template.readiness
        await asyncio.sleep(r.initial_delay_s)
        while not pod.dead and not self._stopping:
            ok = await http_probe(pod.ip, pod.port, r.path, r.timeout_s, expect_pod=pod.name)
            if pod.frozen or pod.dead:
                return
            if ok:
                pod.successes, pod.failures = pod.successes + 1, 0
                if not pod.ready and pod.successes >= r.success_threshold:
                    self._set_ready(pod, True)
            else:
                pod.failures, pod.successes = pod.failures + 1, 0
                if pod.ready and pod.failures >= r.failure_threshold:
                    self._set_ready(pod, False)
            await asyncio.sleep(r.period_s)

    def _set_ready(self, pod: PodState, ready: bool) -> None:
        if pod.ready == ready:
            return
        pod.ready = ready
        if ready:
            self.log.log("pod_ready", pod.name, f"ip={pod.ip}")
        else:
            self.log.log("pod_unready", pod.name, f"ip={pod.ip}")
        self._endpoints_maybe_changed()

    def _svc_items(self) -> list[tuple[str, ServiceConfig]]:
        return [(s.key, s) for s in self.config.services]

    def _compute(self, svc: ServiceConfig) -> tuple[Endpoint, ...]:
        selected = [p for p in self.pods.values() if p.workload.namespace == svc.namespace
                    and all(p.workload.labels.get(k) == v for k, v in svc.selector.items())]
        # A terminating pod stays in the slice (ready=false) until its process is gone; it is
        # serving while its readiness probe passes (the kubelet keeps probing it).
        # (A pod on a down node keeps its last reported state, ready, until it is evicted.)
        eps = [Endpoint(p.name, p.ip, svc.target_port, f"node-{p.node}", ready=not p.terminating,
                        serving=p.ready, terminating=p.terminating)
               for p in selected if p.ready or (p.terminating and not p.dead)]
        return tuple(sorted(eps, key=lambda e: e.pod))

    def _endpoints_maybe_changed(self) -> None:
        for key, svc in self._svc_items():
            eps = self._compute(svc)
            if eps != self.endpoints[key]:
                self.endpoints[key] = eps
                self.log.log("endpoints_changed", key, " ".join(e.pod for e in eps) or "(none)")
                self._spawn_bg(self._sync_later(key, eps))

    async def _sync_later(self, key: str, eps: tuple[Endpoint, ...]) -> None:
        await asyncio.sleep(self.config.run.endpoint_sync_delay_s)
        # One delivery at a time per Service, in order: a front end computing an update from its
        # previous table must never see two updates of the same Service interleave.
        async with self._sync_locks.setdefault(key, asyncio.Lock()):
            self.synced[key] = eps
            self.log.log("endpoints_synced", key, synced_detail(eps))
            for sub in self.subscribers:
                try:
                    await sub(key, eps)
                except Exception as e:  # the front end failed to apply it: a fact of the run, logged
                    self.log.log("sync_failed", key, f"{type(e).__name__}: {str(e)[:300]}")

    def _spawn_bg(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._bg.add(task)
        task.add_done_callback(self._bg.discard)

    # ---- the failure timeline --------------------------------------------------------------

    def resolve(self, target: str, index: int | None) -> list[PodState]:
        """Pods an event acts on: pod/NAME, node/NAME (all its pods) or one pod of a workload."""
        kind, _, name = target.partition("/")
        live = sorted((p for p in self.pods.values() if not p.dead and not p.terminating), key=lambda p: p.name)
        if kind == "pod":
            return [p for p in live if p.name == name]
        if kind == "node":
            return [p for p in live if f"node-{p.node}" == name]
        mine = [p for p in live if p.workload.key == target]
        if not mine:
            return []
        if index is None:
            return [self.rng.choice(mine)]
        if index >= len(mine):
            # The config checks index against the replicas; fewer are alive now (one is being
            # replaced): acting on another pod instead would be a silent wrap.
            self.log.log("event_missed", target, f"index={index} live_pods={len(mine)}")
            return []
        return [mine[index]]

    async def kill_pod(self, pod: PodState) -> None:
        """SIGKILL: a crash. The kubelet notices the exit; the pod is replaced after restart_delay."""
        self.log.log("pod_killed", pod.name, f"ip={pod.ip} signal=SIGKILL")
        if pod.child is not None:
            pod.child.signal(signal.SIGKILL)

    async def delete_pod(self, pod: PodState, replace: bool = True) -> None:
        """Graceful deletion, the Kubernetes way: the pod is marked terminating (its endpoint turns
        ready=false, serving while its probe passes), the preStop delay runs, then SIGTERM (in-flight
        work finishes), and SIGKILL once terminationGracePeriod has passed since the deletion."""
        t = pod.template
        pod.terminating = True
        self.log.log("pod_terminating", pod.name, f"ip={pod.ip} preStop={t.pre_stop_delay_s:g}s "
                                                  f"grace={t.termination_grace_period_s:g}s")
        self._endpoints_maybe_changed()
        self._spawn_bg(self._terminate(pod))
        if replace and not self._stopping and self._replicas(pod.workload) > len(self._live(pod.workload)):
            self._spawn_bg(self._replace_later(pod.workload))

    async def _terminate(self, pod: PodState) -> None:
        child, t = pod.child, pod.template
        if child is None:
            return
        grace_s = t.termination_grace_period_s
        pre_stop_s = min(t.pre_stop_delay_s, grace_s)
        await asyncio.sleep(pre_stop_s)
        if not child.alive():
            return
        self.log.log("pod_sigterm", pod.name, f"ip={pod.ip}")
        child.signal(signal.SIGTERM)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(grace_s - pre_stop_s):
                await child.wait()
                return
        self.log.log("pod_sigkill", pod.name, f"ip={pod.ip} terminationGracePeriod {grace_s:g}s over")
        child.signal(signal.SIGKILL)

    def set_faults(self, pod: PodState, **faults: object) -> None:
        if pod.child is not None:
            send(pod.child.stdin, {"faults": faults})
        self.log.log("pod_faults", pod.name, " ".join(f"{k}={v}" for k, v in faults.items()))

    async def scale(self, workload_key: str, replicas: int) -> None:
        self.desired[workload_key] = replicas
        self.log.log("scaled", workload_key, f"replicas={replicas}")
        w = next(w for w in self.config.workloads if w.key == workload_key)
        await self._reconcile(w)

    async def node_down(self, node: int) -> None:
        """Every pod of the node dies; the kubelet stops reporting; endpoints go after the grace period."""
        self.nodes_down.add(node)
        self.log.log("node_down", f"node-{node}")
        victims = [p for p in self.pods.values() if p.node == node and not p.dead]
        for p in victims:
            p.frozen = True
            if p.child is not None:
                p.child.signal(signal.SIGKILL)
        self._spawn_bg(self._node_grace(node, victims))

    async def _node_grace(self, node: int, victims: list[PodState]) -> None:
        await asyncio.sleep(self.config.run.node_grace_period_s)
        if node not in self.nodes_down:
            return  # back in time (a partition healed): its kubelet reports again, nothing is evicted
        self.log.log("node_not_ready", f"node-{node}", "grace period over: pods evicted")
        for p in victims:
            p.dead = True
            p.evicted = True
            self._set_ready(p, False)
        for w in self.config.workloads:
            await self._reconcile(w)

    async def partition(self, node: int) -> None:
        """The node is cut off: its pods run on, but its kubelet's reports stop reaching the cluster."""
        self.nodes_down.add(node)
        self.log.log("node_partitioned", f"node-{node}")
        victims = [p for p in self.pods.values() if p.node == node and not p.dead]
        for p in victims:
            p.frozen = True  # status frozen as last reported: endpoints stay until the grace period
        self._spawn_bg(self._node_grace(node, victims))

    async def reconnect(self, node: int) -> None:
        """A partition heals: evicted pods found on the node are deleted (as its kubelet does when it
        reconnects), the others report again."""
        self.nodes_down.discard(node)
        self.log.log("node_reconnected", f"node-{node}")
        for p in [p for p in self.pods.values() if p.node == node]:
            if p.evicted and p.child is not None and p.child.alive():
                p.terminating = True
                self.log.log("pod_deleted_stale", p.name, f"ip={p.ip} evicted while the node was cut off")
                p.child.signal(signal.SIGKILL)
            elif p.frozen:
                p.frozen = False
                p.tasks.append(asyncio.create_task(self._probe_loop(p)))
        for w in self.config.workloads:
            await self._reconcile(w)

    async def rolling_update(self, workload_key: str, template: PodTemplate) -> None:
        """maxSurge 1, maxUnavailable 0: add one new pod, wait until ready, delete one old."""
        w = next(w for w in self.config.workloads if w.key == workload_key)
        old = self._live(w)
        self.templates[w.key] = template
        self.log.log("rollout_started", w.key, f"old={len(old)}")
        for victim in old:
            if w.kind == "StatefulSet":  # stable names: the old pod must be gone first (no surge)
                await self.delete_pod(victim, replace=False)
                if victim.child is not None:
                    await victim.child.wait()
            async with self._reconcile_lock:
                new = await self._create_pod(w, ordinal=int(victim.name.rsplit("-", 1)[1])
                                             if w.kind == "StatefulSet" else None)
            if new is not None:
                await self._wait_pod_ready(new)
            if w.kind != "StatefulSet":
                await self.delete_pod(victim, replace=False)
        self.log.log("rollout_finished", w.key)
