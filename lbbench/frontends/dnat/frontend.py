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
generator's and the pods'; with ``workers=N`` as N processes sharing every listener
(SO_REUSEPORT), for a like-for-like comparison with a multi-threaded HAProxy. Experiments
keep one worker: one process's CPU, one seeded sequence of choices.

The parts: :mod:`dnat_plan` (addresses, listeners), :mod:`dnat_relay` (the data path, in the
child), :mod:`dnat_worker` (the child's main and the parent's handle on its processes).
"""

from __future__ import annotations

import argparse

from lbbench.frontends.base import Entrypoint, Frontend, FrontendPlan
from lbbench.frontends.dnat.plan import (
    ForwarderPlan,
    Listener,
    Mode,
    entrypoint_of,
    forwarder_plan,
    lb_table,
    node_port_addrs,
    validate_service,
)
from lbbench.frontends.dnat.worker import ForwarderPool, ForwarderProcess, endpoints_message
from lbbench.model.addresses import parse_hostport
from lbbench.model.service import Endpoint, ServiceType
from lbbench.system.procs import Supervisor

__all__ = [
    "ForwarderPlan", "ForwarderPool", "ForwarderProcess", "Listener", "Mode", "UserspaceDnat", "add_serve_arguments",
    "endpoints_message", "entrypoint_of", "forwarder_plan", "lb_table", "node_port_addrs", "serve_command",
    "validate_service",
]


class UserspaceDnat(Frontend):
    """kube-proxy-style random DNAT in a userspace L4 forwarder process (or `workers` of them)."""

    name = "userspace-dnat"
    layer = "l4"

    def __init__(self, plan: FrontendPlan, supervisor: Supervisor, mode: Mode = "random", workers: int = 1) -> None:
        super().__init__(plan, supervisor)
        if workers < 1:
            raise ValueError(f"userspace-dnat: workers must be >= 1, got {workers}")
        self.mode: Mode = mode
        self.workers = workers
        self.services = {s.key: s for s in plan.services}
        self.pool: ForwarderPool | None = None

    async def start(self) -> None:
        fplan = forwarder_plan(self.plan.services, self.mode, self.plan.seed)
        if self.plan.artifacts_dir is not None:
            self.plan.artifacts_dir.mkdir(parents=True, exist_ok=True)
            (self.plan.artifacts_dir / "userspace-dnat.json").write_text(fplan.to_json() + "\n")
        pool = ForwarderPool(self.supervisor, fplan, self.workers, self.name)
        await pool.start()
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
        spec = self.services.get(service_key)
        if spec is None:
            raise ValueError(f"unknown service {service_key!r}")
        return entrypoint_of(spec, via)

    async def counters(self) -> dict[str, float]:
        return await self.pool.counters() if self.pool is not None else {}

    def pids(self) -> list[int]:
        return self.pool.pids() if self.pool is not None else []


# ---------------------------------------------------------------------------------------
# `lbbench serve dnat`


def add_serve_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--listen", action="append", default=[], metavar="VIP:PORT",
                   help="loopback address to accept on (repeatable; all share one endpoint table)")
    p.add_argument("--backend", action="append", default=[], metavar="IP:PORT",
                   help="endpoint (repeatable); none: every connection is reset, like kube-proxy's REJECT")
    p.add_argument("--mode", choices=("random", "rr"), default="random",
                   help="choice per new connection: uniform random (kube-proxy) or round robin (IPVS rr)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random choice (worker i uses seed + i)")
    p.add_argument("--workers", type=int, default=1, metavar="N",
                   help="forwarder processes sharing each listener with SO_REUSEPORT (default 1); "
                        "with N > 1 this process only relays control messages, and rr is per worker")
    p.add_argument("--plan-json", help=argparse.SUPPRESS)  # lbbench's own use: several Services at once


def _cli_plan(args: argparse.Namespace) -> ForwarderPlan:
    if args.workers < 1:
        raise ValueError(f"--workers must be >= 1, got {args.workers}")
    if args.plan_json:
        return ForwarderPlan.from_json(args.plan_json)
    if not args.listen:
        raise ValueError("--listen VIP:PORT is required")
    listeners = tuple(Listener(parse_hostport(x), "service") for x in args.listen)
    backends = tuple(parse_hostport(b) for b in args.backend)
    for b in backends:
        if b.port == 0:
            raise ValueError(f"--backend {b}: port 0 is not a destination")
    plan = ForwarderPlan(listeners, (("service", backends),), args.mode, args.seed)
    plan.check()
    return plan


def serve_command(args: argparse.Namespace) -> int:
    import uvloop

    from lbbench.frontends.dnat.worker import ForwarderFailed, send_reply, serve_forwarder, serve_pool
    from lbbench.system.procs import die_with_parent

    die_with_parent()
    plan = _cli_plan(args)
    try:
        uvloop.run(serve_forwarder(plan) if args.workers == 1 else serve_pool(plan, args.workers))
    except (OSError, ForwarderFailed) as e:  # e.g. address in use: one clear line
        message = f"cannot listen: {e}" if isinstance(e, OSError) else str(e)
        if args.plan_json:  # lbbench drives this process: say it on the control pipe, where it waits
            send_reply({"failed": message})
            return 2
        raise ValueError(message) from None
    return 0
