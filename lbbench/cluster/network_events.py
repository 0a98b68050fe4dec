"""The timeline's network events: a node that goes silent or is cut off, lossy links, unreachable pods.

Each plays its nft rules through :class:`NetworkFaults` (inside the run's own namespace) and
the cluster side of the story through the controller (pods killed or frozen, Endpoints kept
until the node grace period). Where no namespace is available the rules cannot be written:
the event is logged as skipped with the reason (``node_down`` still kills the node's pods,
but they are then refused at once rather than silent).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from lbbench.cluster.controller import Controller, PodState
from lbbench.cluster.events import EventLog
from lbbench.cluster.netfaults import NetworkFault, NetworkFaults, loss, silence, unreachable

NETWORK_ACTIONS = ("partition", "packet_loss", "pod_unreachable")


class NetworkEvents:
    def __init__(self, controller: Controller, faults: NetworkFaults | None, unavailable: str | None) -> None:
        self.controller = controller
        self.faults = faults
        self.unavailable = unavailable or "no network namespace"
        self._heals: set[asyncio.Task[None]] = set()

    @property
    def log(self) -> EventLog:
        return self.controller.log

    async def node_down(self, node: int) -> None:
        """Silent: the node's addresses drop every packet first (so even the dying sockets' RSTs are
        lost), then its pods stop. Endpoints go after the node grace period."""
        net = self.controller.config.cluster.node_network(node)
        await self._add(f"node-{node}", silence(f"node_down node-{node}", [net]), "node_down")
        await self.controller.node_down(node)

    async def partition(self, node: int, duration_s: float | None) -> None:
        net = self.controller.config.cluster.node_network(node)
        if not await self._add(f"node-{node}", silence(f"partition node-{node}", [net]), "partition"):
            return
        await self.controller.partition(node)
        self._heal_after(duration_s, f"node-{node}", lambda: self.controller.reconnect(node))

    async def packet_loss(self, target: str, index: int | None, percent: float, duration_s: float | None) -> None:
        addrs = self._addresses(target, index)
        key = f"loss {target}"
        if not addrs:
            self.log.log("network_fault_skipped", target, "packet_loss: no pod to target")
            return
        if await self._add(key, loss(f"packet_loss {percent:g}% {target}", addrs, percent), "packet_loss"):
            self._heal_after(duration_s, key)

    async def pod_unreachable(self, target: str, index: int | None, duration_s: float | None) -> None:
        for pod in self.controller.resolve(target, index):
            key = f"unreachable {pod.name}"
            if await self._add(key, unreachable(f"pod_unreachable {pod.name}", [pod.ip]), "pod_unreachable"):
                self._heal_after(duration_s, key)

    def _addresses(self, target: str, index: int | None) -> list[str]:
        kind, _, name = target.partition("/")
        c = self.controller
        if kind == "node":
            return [c.config.cluster.node_network(int(name.rsplit("-", 1)[1]))]
        if kind == "service":
            return sorted(p.ip for p in _service_pods(c, name))
        return [p.ip for p in c.resolve(target, index)]

    async def _add(self, key: str, fault: NetworkFault, action: str) -> bool:
        if self.faults is None:
            self.log.log("network_fault_skipped", fault.name, f"{action}: {self.unavailable}")
            return False
        await self.faults.add(key, fault)
        self.log.log("network_fault", fault.name, "; ".join(fault.rules))
        return True

    def _heal_after(self, duration_s: float | None, key: str,
                    then: Callable[[], Awaitable[None]] | None = None) -> None:
        if duration_s is None:
            return

        async def heal() -> None:
            await asyncio.sleep(duration_s)
            assert self.faults is not None
            fault = self.faults.active.get(key)
            await self.faults.heal(key)
            self.log.log("network_healed", fault.name if fault else key, f"after {duration_s:g}s")
            if then is not None:
                await then()

        task = asyncio.create_task(heal())
        self._heals.add(task)
        task.add_done_callback(self._heals.discard)

    async def stop(self) -> None:
        """Cancel pending heals and remove every rule: the next phase starts on a clean network."""
        for t in list(self._heals):
            t.cancel()
        await asyncio.gather(*self._heals, return_exceptions=True)
        if self.faults is not None:
            await self.faults.clear()


def _service_pods(c: Controller, name: str) -> list[PodState]:
    svc = next((s for s in c.config.services if s.name == name), None)
    if svc is None:
        return []
    return [p for p in c.pods.values() if not p.dead and not p.terminating and p.workload.namespace == svc.namespace
            and all(p.workload.labels.get(k) == v for k, v in svc.selector.items())]
