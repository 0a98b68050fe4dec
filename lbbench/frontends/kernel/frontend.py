"""What the kernel front ends share: a loader in lbbench's namespace, and kube-proxy's sync loop.

kube-proxy does not write one Service at a time: changes accumulate while a sync runs and
the next sync writes them all at once (nftables: one transaction; iptables: one
``iptables-restore``). :meth:`KernelFrontend.update_endpoints` does the same: a change that
arrives while a sync is being applied waits for the next one, together with every other
change that arrived meanwhile, and returns once the kernel has it. A full resync (every
Service rewritten) happens at start and on :meth:`KernelFrontend.full_resync`.

Subclasses say only how to load rules and what text each sync is.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from lbbench.errors import UserError
from lbbench.frontends.base import Entrypoint, Frontend, FrontendPlan
from lbbench.frontends.dnat.plan import forwarder_plan, service_entrypoint
from lbbench.frontends.dnat.worker import ForwarderProcess
from lbbench.frontends.kernel.applier import RulesApplier
from lbbench.model.service import Endpoint, ServiceSpec, ServiceType
from lbbench.system.netns import find_tool, in_private_netns, netns_unavailable_reason
from lbbench.system.procs import Supervisor

Change = tuple[Sequence[Endpoint], Sequence[Endpoint]]  # (previous, new) endpoints of one Service


@dataclass(frozen=True)
class SyncRecord:
    """One sync as applied: how many Services it carried, in how many loader runs, how long."""

    kind: str  # "start", "partial", "full"
    services: int
    transactions: int
    render_s: float
    apply_s: float
    cpu_s: float  # the loader's CPU plus this process's rendering


class KernelFrontend(Frontend, abc.ABC):
    """A kernel data plane driven like kube-proxy: batched partial syncs, full resyncs."""

    falls_back_to_terminating = True  # kube-proxy's terminating-endpoint fallback (KEP-1669)

    layer = "l4"
    tool = "nft"

    @classmethod
    def unavailable_reason(cls) -> str | None:
        """Its loader must be installed, and the rules must go into lbbench's own namespace."""
        if find_tool(cls.tool) is None:
            return f"{cls.tool} is not installed"
        return None if in_private_netns() else netns_unavailable_reason()

    def __init__(self, plan: FrontendPlan, supervisor: Supervisor) -> None:
        super().__init__(plan, supervisor)
        self.services = {s.key: s for s in plan.services}
        self.endpoints: dict[str, tuple[Endpoint, ...]] = {s.key: () for s in plan.services}
        self.applier: RulesApplier | None = None
        self.lb_hop: ForwarderProcess | None = None
        self.syncs: list[SyncRecord] = []
        self._pending: dict[str, tuple[Endpoint, ...]] = {}
        self._batch: asyncio.Future[None] | None = None  # the sync that collects the pending changes
        self._sync_lock = asyncio.Lock()

    # What differs between the kernel modes: the loader, and the text of each sync.
    @abc.abstractmethod
    def make_applier(self, directory: Path | None) -> RulesApplier: ...

    @abc.abstractmethod
    def check(self, services: Sequence[ServiceSpec]) -> None:
        """Raise ValueError for a Service this mode cannot write."""

    @abc.abstractmethod
    def render_full(self, endpoints: Mapping[str, Sequence[Endpoint]]) -> list[str]:
        """Every Service written afresh (start, full resync), in as few loader runs as fit."""

    @abc.abstractmethod
    def render_sync(self, changes: Mapping[ServiceSpec, Change],
                    proposed: Mapping[str, Sequence[Endpoint]]) -> list[str]:
        """A partial sync: only the changed Services (plus what kube-proxy rewrites every time)."""

    @abc.abstractmethod
    def render_stop(self) -> str: ...

    def loader_args(self, kind: str) -> Sequence[str]:
        """Extra loader arguments for a sync of this kind (iptables-restore --noflush for partial)."""
        return ()

    async def _apply_all(self, texts: Sequence[str], reason: str, kind: str) -> tuple[float, float]:
        """Apply in order; returns (seconds, loader CPU seconds)."""
        assert self.applier is not None
        took = cpu = 0.0
        args = self.loader_args(kind)
        for i, text in enumerate(texts):
            part = reason if len(texts) == 1 else f"{reason} ({i + 1}/{len(texts)})"
            took += await self.applier.apply(text, part, args)
            cpu += self.applier.last_cpu_s
        return took, cpu

    async def _sync(self, kind: str, services: int, render: Callable[[], list[str]], reason: str) -> SyncRecord:
        cpu0 = time.process_time()
        t0 = time.perf_counter()
        texts = render()
        render_s = time.perf_counter() - t0
        render_cpu = time.process_time() - cpu0
        apply_s, loader_cpu = await self._apply_all(texts, reason, kind)
        record = SyncRecord(kind, services, len(texts), render_s, apply_s, loader_cpu + render_cpu)
        self.syncs.append(record)
        return record

    async def start(self) -> None:
        if not (self.plan.in_netns and in_private_netns()):
            raise UserError(f"{self.name} writes netfilter rules only inside lbbench's private network "
                            "namespace (run through lbbench.system.netns.netns_argv); refusing to touch the host's")
        self.check(self.plan.services)
        self.applier = self.make_applier(self.plan.artifacts_dir)
        await self._sync("start", len(self.services), lambda: self.render_full(self.endpoints),
                         "start: no endpoints yet")
        lb_plan = forwarder_plan(list(self.plan.services), "random", self.plan.seed, include_cluster=False)
        if lb_plan.listeners:
            self.lb_hop = ForwarderProcess(self.supervisor, lb_plan, f"{self.name}-lb")
            await self.lb_hop.start()

    async def update_endpoints(self, service_key: str, endpoints: tuple[Endpoint, ...]) -> None:
        await self.update_many({service_key: endpoints})

    async def update_many(self, changes: Mapping[str, tuple[Endpoint, ...]]) -> None:
        """Queue these Endpoints for the next sync; return once it is applied (raise if it failed)."""
        for key in changes:
            if key not in self.services:
                raise ValueError(f"unknown service {key!r}")
        if self.applier is None:
            raise RuntimeError(f"{self.name} is not started")
        self._pending.update({k: tuple(v) for k, v in changes.items()})
        if self._batch is not None:  # a sync is already waiting to take these
            await asyncio.shield(self._batch)
            return
        batch = self._batch = asyncio.get_running_loop().create_future()
        await asyncio.sleep(0)  # changes made in this same turn of the loop join this sync
        async with self._sync_lock:  # the previous sync finishes; changes keep joining this batch meanwhile
            pending, self._pending, self._batch = self._pending, {}, None
            try:
                await self._apply_partial(pending)
                batch.set_result(None)
            except Exception as e:
                batch.set_exception(e)
        await batch

    async def _apply_partial(self, pending: Mapping[str, tuple[Endpoint, ...]]) -> None:
        changes = {self.services[k]: (self.endpoints[k], new) for k, new in pending.items()
                   if self.endpoints[k] != new}
        if not changes:
            return
        proposed = {**self.endpoints, **pending}
        what = next(iter(pending)) if len(pending) == 1 else f"{len(changes)} services"
        await self._sync("partial", len(changes), lambda: self.render_sync(changes, proposed),
                         f"endpoints {what}: {sum(len(v) for v in pending.values())}")
        self.endpoints.update(pending)  # only once the kernel has it

    async def full_resync(self) -> SyncRecord:
        """Rewrite every Service from the current Endpoints (kube-proxy's periodic full sync)."""
        if self.applier is None:
            raise RuntimeError(f"{self.name} is not started")
        async with self._sync_lock:
            return await self._sync("full", len(self.services), lambda: self.render_full(self.endpoints),
                                    "full resync")

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
        return service_entrypoint(self.services, service_key, via)

    async def counters(self) -> dict[str, float]:
        out = self.applier.counters() if self.applier is not None else {}
        if self.syncs:
            out["syncs_total"] = len(self.syncs)
            out["sync_services_max"] = max(s.services for s in self.syncs)
        if self.lb_hop is not None:
            out.update({f"lb_{k}": v for k, v in (await self.lb_hop.counters()).items()})
        return out

    def pids(self) -> list[int]:
        # The kernel's DNAT work is charged to the clients' and pods' processes (softirq);
        # only the cloud-LB hop is a process of ours.
        pid = self.lb_hop.pid if self.lb_hop is not None else None
        return [pid] if pid is not None else []
