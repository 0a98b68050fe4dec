"""`lbbench serve proxy`: lbbench's queueing L7 reverse proxy on its own, or as the l7-proxy front end's child.

The flags override a plan's ProxySettings field by field; the proxy itself
(lbbench.frontends.proxy) takes a ProxyConfig and knows no flags.
"""

from __future__ import annotations

import argparse
import socket
from pathlib import Path
from typing import TYPE_CHECKING

from lbbench.errors import UserError
from lbbench.frontends.proxy.config import Limits
from lbbench.model.proxy import BALANCES

if TYPE_CHECKING:
    from lbbench.frontends.proxy.config import ProxyConfig
    from lbbench.frontends.proxy.discovery import DiscoverySettings
    from lbbench.system.sharedaccept import Loads

# Flags that override ProxySettings (None: keep the plan's or the default value).
_SETTING_FLAGS = {
    "maxconn": "maxconn", "max_queue": "max_queue", "queue_timeout": "queue_timeout_s", "balance": "balance",
    "retries": "retries", "retry_idempotent": "retry_idempotent", "eject_after": "eject_after",
    "connect_timeout": "connect_timeout_s", "server_timeout": "server_timeout_s",
    "client_timeout": "client_timeout_s", "workers": "workers",
}
_HEALTH_FLAGS = {"health_interval": "interval_s", "health_timeout": "timeout_s", "health_fall": "fall",
                 "health_rise": "rise", "health_path": "path"}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.epilog = ("A plain HTTP/1.1 GET/HEAD request and a plain Content-Length answer that each arrive whole in "
                "one read are read by a C scan (lbbench/frontends/proxy/_heads.c) where it is built; everything "
                "else by llhttp (httptools); the same C module makes each request's Exchange. "
                "LBBENCH_PURE_HEADS=1 reads everything with llhttp and makes Exchanges in Python.")
    p.add_argument("--listen", metavar="IP:PORT", help="loopback address of the proxy (default: the plan's Ingress)")
    p.add_argument("--backend", action="append", default=[], metavar="IP:PORT",
                   help="a backend of the default Service (repeat for more)")
    p.add_argument("--plan", type=Path, metavar="FILE", help="FrontendPlan JSON written by the l7-proxy front end")
    p.add_argument("--stats", metavar="IP:PORT", help="stats endpoint: JSON at /stats, Prometheus at /metrics")
    p.add_argument("--maxconn", type=int, help="requests in flight per backend, 0 = unlimited (default 1)")
    p.add_argument("--max-queue", type=int, help="requests waiting in the central queue (default 10000)")
    p.add_argument("--queue-timeout", type=float, metavar="S", help="max wait in the queue, then 503 (default 5)")
    p.add_argument("--balance", choices=BALANCES, help="balancing algorithm (default round-robin)")
    p.add_argument("--retries", type=int, help="retries of failed connects on another backend (default 3)")
    p.add_argument("--retry-idempotent", action=argparse.BooleanOptionalAction, default=None,
                   help="also retry idempotent requests reset before any response byte (default on)")
    p.add_argument("--eject-after", type=int, help="consecutive failures that eject a backend, 0 = never (default 3)")
    p.add_argument("--connect-timeout", type=float, metavar="S", help="connect timeout to a backend (default 1)")
    p.add_argument("--server-timeout", type=float, metavar="S", help="backend inactivity timeout (default 30)")
    p.add_argument("--client-timeout", type=float, metavar="S",
                   help="client idle / header / body / write-stall timeout (default 30)")
    p.add_argument("--health-interval", type=float, metavar="S", help="active check interval, 0 = off (default 0.5)")
    p.add_argument("--health-timeout", type=float, metavar="S", help="active check timeout (default 1)")
    p.add_argument("--health-fall", type=int,
                   help="failed checks that mark a backend down (default 2); each verdict is a JSON line on stdout "
                        "(backend_down / backend_up), and a backend the checks cannot connect to also gives up "
                        "its requests in flight (retried elsewhere when allowed)")
    p.add_argument("--health-rise", type=int, help="passed checks that bring it back (default 1)")
    p.add_argument("--health-path", help="active check path (default /healthz)")
    p.add_argument("--max-header-bytes", type=int, default=Limits.max_header_bytes, help="request head limit -> 431")
    p.add_argument("--max-headers", type=int, default=Limits.max_headers, help="header field count limit -> 431")
    p.add_argument("--max-body-bytes", type=int, default=Limits.max_body_bytes, help="request body limit -> 413")
    p.add_argument("--max-clients", type=int, default=Limits.max_clients, help="client connections limit")
    p.add_argument("--seed", type=int, help="seed of the random balancers")
    p.add_argument("--backend-dns", metavar="NAME:PORT",
                   help="find the default Service's backends as the A records of NAME (a headless Service: one "
                        "per ready pod), port PORT; re-resolved every --resolve-every seconds and applied as an "
                        "Endpoints update (new pods join, removed ones drain); for running on a real cluster")
    p.add_argument("--resolve-every", type=float, metavar="S",
                   help="with --backend-dns: seconds between DNS lookups (default 1)")
    p.add_argument("--dns", metavar="IP:PORT",
                   help="with --backend-dns: the DNS server to ask (default: the system resolver, /etc/resolv.conf)")
    p.add_argument("--allow-remote", action="store_true",
                   help="accept a --listen address and backends outside 127.0.0.0/8 (only in a container on a "
                        "real cluster; lbbench is loopback-only otherwise)")
    p.add_argument("--workers", type=int, metavar="N",
                   help="proxy processes sharing the listening socket, the least loaded accepting (default 1). "
                        "Each is a whole proxy with its own queue and maxconn slots: one queue per worker, not "
                        "M/M/c; for throughput benchmarks (lbbench's theory models one central queue)")
    p.add_argument("--no-control", action="store_true", help="do not read control messages from stdin")
    p.add_argument("--worker-of", help=argparse.SUPPRESS)  # set by the --workers manager for its workers


def run(args: argparse.Namespace) -> int:
    import uvloop

    from lbbench.frontends.proxy.app import serve
    from lbbench.system.procs import die_with_parent

    die_with_parent()
    config = proxy_config(args)
    try:
        if args.worker_of is not None:
            uvloop.run(serve(config, control=not args.no_control, shared=_shared(args.worker_of)))
        elif config.settings.workers > 1:
            from lbbench.frontends.proxy.workers import serve_workers

            uvloop.run(serve_workers(config, config.settings.workers, _worker_argv(),
                                     control=not args.no_control))
        else:
            uvloop.run(serve(config, control=not args.no_control))
    except OSError as e:
        raise UserError(f"cannot listen on {config.listen} / {config.stats}: {e.strerror or e}") from None
    return 0


def _worker_argv() -> list[str]:
    """This very command line, for the workers (they add the socket they inherit and their stats port)."""
    import sys

    from lbbench.system.procs import lbbench_argv

    args = sys.argv[1:]
    if args[:2] != ["serve", "proxy"]:
        raise UserError("--workers: run as `lbbench serve proxy ...`")
    return lbbench_argv(*args)


def _shared(worker_of: str) -> tuple[socket.socket, Loads]:
    """The listening socket and the loads array a worker inherits from its manager."""
    from lbbench.frontends.proxy.workers import parse_worker_of
    from lbbench.system.sharedaccept import Loads

    listen_fd, loads_fd, index, workers = parse_worker_of(worker_of)
    return socket.socket(fileno=listen_fd), Loads(loads_fd, workers, index)


def proxy_config(args: argparse.Namespace) -> ProxyConfig:
    from lbbench.frontends.proxy.config import ProxyOverrides, config_from, plan_from_json
    from lbbench.model.addresses import parse_hostport

    try:
        plan = plan_from_json(args.plan.read_text()) if args.plan is not None else None
    except OSError as e:
        raise UserError(f"cannot read the plan: {e}") from None
    over = ProxyOverrides(
        listen=parse_hostport(args.listen, allow_remote=args.allow_remote) if args.listen else None,
        backends=tuple(parse_hostport(b) for b in args.backend),
        stats=parse_hostport(args.stats) if args.stats else None,
        settings=_given(args, _SETTING_FLAGS), health=_given(args, _HEALTH_FLAGS),
        limits=Limits(args.max_header_bytes, args.max_headers, args.max_body_bytes, args.max_clients),
        seed=args.seed, discovery=_discovery(args),
    )
    return config_from(plan, over)


def _discovery(args: argparse.Namespace) -> DiscoverySettings | None:
    """--backend-dns/--resolve-every/--dns, checked; None without --backend-dns."""
    from lbbench.frontends.proxy.discovery import DiscoverySettings, parse_backend_dns
    from lbbench.model.addresses import parse_hostport

    if args.backend_dns is None:
        for flag, value in (("--resolve-every", args.resolve_every), ("--dns", args.dns)):
            if value is not None:
                raise ValueError(f"{flag} only applies with --backend-dns NAME:PORT")
        return None
    every_s = 1.0 if args.resolve_every is None else args.resolve_every
    if not 0.05 <= every_s <= 3600:
        raise ValueError(f"--resolve-every must be between 0.05 and 3600 seconds, got {every_s:g}")
    server = parse_hostport(args.dns, default_port=53, allow_remote=args.allow_remote) if args.dns else None
    return DiscoverySettings(parse_backend_dns(args.backend_dns), every_s, server, args.allow_remote)


def _given(args: argparse.Namespace, flags: dict[str, str]) -> dict[str, object]:
    """{field: value} of the flags given on the command line."""
    return {field: getattr(args, flag) for flag, field in flags.items() if getattr(args, flag) is not None}
