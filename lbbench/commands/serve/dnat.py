"""`lbbench serve dnat`: the userspace random-DNAT forwarder, one process or N workers."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lbbench.frontends.dnat.plan import ForwarderPlan


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--listen", action="append", default=[], metavar="VIP:PORT",
                   help="loopback address to accept on (repeatable; all share one endpoint table)")
    p.add_argument("--backend", action="append", default=[], metavar="IP:PORT",
                   help="endpoint (repeatable); none: every connection is reset, like kube-proxy's REJECT")
    p.add_argument("--mode", choices=("random", "rr"), default="random",
                   help="choice per new connection: uniform random (kube-proxy) or round robin (IPVS rr)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random choice (worker i uses seed + i)")
    p.add_argument("--workers", type=int, default=1, metavar="N",
                   help="forwarder processes sharing each listener (default 1); with N > 1 this process "
                        "only relays control messages, and rr is per worker")
    p.add_argument("--accept", choices=("shared", "reuseport"), default="shared",
                   help="with --workers N: one listening socket inherited by all workers, accepted by whichever "
                        "is free, like HAProxy's threads (shared, default); or a socket each with SO_REUSEPORT, "
                        "the kernel hashing connections over them (reuseport)")
    p.add_argument("--plan-json", help=argparse.SUPPRESS)  # lbbench's own use: several Services at once


def run(args: argparse.Namespace) -> int:
    from lbbench.frontends.dnat.worker import ForwarderFailed, run_forwarder
    from lbbench.system.control import reply
    from lbbench.system.procs import die_with_parent

    die_with_parent()
    plan = forwarder_plan_of(args)
    try:
        run_forwarder(plan, args.workers, args.accept)
    except ForwarderFailed as e:  # e.g. address in use: one clear line
        if args.plan_json:  # lbbench drives this process: say it on the control pipe, where it waits
            reply({"failed": str(e)})
            return 2
        raise ValueError(str(e)) from None
    return 0


def _plan_text(value: str) -> str:
    """The plan itself, or ``@FILE``: the parent's file for a plan too big for one argument (read, removed)."""
    if not value.startswith("@"):
        return value
    from pathlib import Path

    path = Path(value[1:])
    text = path.read_text()
    path.unlink(missing_ok=True)
    return text


def forwarder_plan_of(args: argparse.Namespace) -> ForwarderPlan:
    from lbbench.frontends.dnat.plan import ForwarderPlan, Listener
    from lbbench.model.addresses import parse_hostport

    if args.workers < 1:
        raise ValueError(f"--workers must be >= 1, got {args.workers}")
    if args.plan_json:
        return ForwarderPlan.from_json(_plan_text(args.plan_json))
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
