"""`lbbench serve pod`: one backend pod process."""

from __future__ import annotations

import argparse
import sys
import zlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lbbench.cluster.pod import PodSpec


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--listen", required=True, metavar="IP:PORT", help="loopback address to bind (port 0: any)")
    p.add_argument("--name", default="pod", help="pod name, returned in x-pod")
    p.add_argument("--service", default="exp:10ms",
                   help="service time: const:MEAN, exp:MEAN, lognormal:MEAN,SIGMA, uniform:LOW,HIGH")
    p.add_argument("--slots", type=int, default=1, help="parallel service slots (FIFO wait in front)")
    p.add_argument("--burn-cpu", action="store_true", help="burn CPU for the service time instead of sleeping")
    p.add_argument("--seed", type=int, default=0, help="seed of the service-time and fault draws")
    p.add_argument("--error-rate", type=float, default=0.0, help="fraction of requests answered 503")
    p.add_argument("--slow-factor", type=float, default=1.0, help="service-time multiplier")
    p.add_argument("--hang-rate", type=float, default=0.0, help="fraction of requests never answered")
    p.add_argument("--close-rate", type=float, default=0.0, help="fraction of requests closed without reply")
    p.add_argument("--unready", action="store_true", help="start with /healthz failing")
    p.add_argument("--no-control", action="store_true", help="do not read control messages from stdin")
    p.add_argument("--allow-remote", action="store_true",
                   help="accept a --listen address outside 127.0.0.0/8 (only in a container on a real cluster)")
    p.add_argument("--seed-from-name", action="store_true",
                   help="mix the pod name into the seed, so replicas started with the same args differ")


def run(args: argparse.Namespace) -> int:
    import uvloop

    from lbbench.cluster.pod import serve_pod
    from lbbench.system.procs import die_with_parent

    die_with_parent()
    spec = pod_spec(args)
    try:
        uvloop.run(serve_pod(spec, control=not args.no_control))
    except OSError as e:  # its address taken: a fact of the run (the pod dies and is replaced), not a crash
        print(f"pod {spec.name}: cannot listen on {spec.host}:{spec.port}: {e.strerror or e}", file=sys.stderr)
        return 3
    return 0


def pod_spec(args: argparse.Namespace) -> PodSpec:
    from lbbench.cluster.pod import PodSpec
    from lbbench.model.addresses import parse_hostport
    from lbbench.model.faults import Faults
    from lbbench.model.servicetime import ServiceTime

    addr = parse_hostport(args.listen, allow_remote=args.allow_remote)
    seed = args.seed ^ zlib.crc32(args.name.encode()) if args.seed_from_name else args.seed
    if args.slots < 1:
        raise ValueError(f"--slots must be >= 1, got {args.slots}")
    for flag in ("error_rate", "hang_rate", "close_rate"):
        if not 0.0 <= getattr(args, flag) <= 1.0:
            raise ValueError(f"--{flag.replace('_', '-')} must be in [0, 1]")
    faults = Faults(args.error_rate, args.slow_factor, args.hang_rate, args.close_rate, not args.unready)
    return PodSpec(args.name, addr.host, addr.port, ServiceTime.parse(args.service), args.slots,
                   args.burn_cpu, seed, faults)
