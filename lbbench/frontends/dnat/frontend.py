"""userspace-dnat: kube-proxy's random DNAT, done by an L4 forwarder process.

Per *new connection* the forwarder picks one endpoint of the Service uniformly at random
(seeded; ``--mode rr`` for IPVS-style round robin) from its last-synced table, connects to
it and splices the two TCP connections. No queue, no retry, no health checks: like the
kernel rules it imitates, it knows only what the last Endpoints sync told it.

- empty table: the client is reset at once (kube-proxy's REJECT);
- connect failure to the chosen pod: the client is reset at once (the kernel would pass the
  dead pod's RST straight back);
- removing an endpoint leaves established connections on it (conntrack keeps them).

It runs as its own process (``lbbench serve dnat``) so its CPU is measured apart from the
generator's and the pods'; with ``workers=N`` as N processes sharing every listener (one
inherited socket by default, or SO_REUSEPORT; see .worker), for a like-for-like comparison
with a multi-threaded HAProxy. Experiments
keep one worker: one process's CPU, one seeded sequence of choices.

The parts: :mod:`.plan` (addresses, listeners), :mod:`.relay` (the data path, in the child;
pure Python), :mod:`.native` and _crelay.c (the same data path on a C engine thread, used
when built), :mod:`.worker` (the child's main and the parent's handle on its processes); the
command's flags are in lbbench.commands.serve.dnat.
"""

from __future__ import annotations

from lbbench.frontends.base import Entrypoint, Frontend, FrontendPlan
from lbbench.frontends.dnat.plan import (
    Accept,
    ForwarderPlan,
    Listener,
    Mode,
    entrypoint_of,
    forwarder_plan,
    lb_table,
    node_port_addrs,
    service_entrypoint,
    validate_service,
)
from lbbench.frontends.dnat.worker import ForwarderPool, ForwarderProcess
from lbbench.model.service import Endpoint, ServiceType
from lbbench.system.procs import Supervisor

__all__ = [
    "ForwarderPlan", "ForwarderPool", "ForwarderProcess", "Listener", "Mode", "UserspaceDnat",
    "entrypoint_of", "forwarder_plan", "lb_table", "node_port_addrs", "validate_service",
]


class UserspaceDnat(Frontend):
    """kube-proxy-style random DNAT in a userspace L4 forwarder process (or `workers` of them)."""

    falls_back_to_terminating = True  # kube-proxy's terminating-endpoint fallback (KEP-1669)

    name = "userspace-dnat"
    layer = "l4"

    def __init__(self, plan: FrontendPlan, supervisor: Supervisor, mode: Mode = "random", workers: int = 1,
                 accept: Accept = "shared") -> None:
        super().__init__(plan, supervisor)
        if workers < 1:
            raise ValueError(f"userspace-dnat: workers must be >= 1, got {workers}")
        self.mode: Mode = mode
        self.workers = workers
        self.accept: Accept = accept
        self.services = {s.key: s for s in plan.services}
        self.pool: ForwarderPool | None = None

    async def start(self) -> None:
        fplan = forwarder_plan(self.plan.services, self.mode, self.plan.seed)
        if self.plan.artifacts_dir is not None:
            self.plan.artifacts_dir.mkdir(parents=True, exist_ok=True)
            (self.plan.artifacts_dir / "userspace-dnat.json").write_text(fplan.to_json() + "\n")
        pool = ForwarderPool(self.supervisor, fplan, self.workers, self.name, self.accept)
        await pool.start(20.0 + len(fplan.listeners) / 200)  # thousands of Services: binding takes seconds
        self.pool = pool

    async def update_endpoints(self, service_key: str, endpoints: tuple[Endpoint, ...]) -> None:
        if service_key not in self.services:
            raise ValueError(f"unknown service {service_key!r}")
        if self.pool is None:
            raise RuntimeError("userspace-dnat is not started")
        await self.pool.set_endpoints(service_key, endpoints)

    async def stop(self) -> None:
        pool, self.pool = self.pool, None
        if pool is not None:
            await pool.stop()

    def entrypoint(self, service_key: str, via: ServiceType = "ClusterIP") -> Entrypoint:
        return service_entrypoint(self.services, service_key, via)

    async def counters(self) -> dict[str, float]:
        return await self.pool.counters() if self.pool is not None else {}

    def pids(self) -> list[int]:
        return self.pool.pids() if self.pool is not None else []
