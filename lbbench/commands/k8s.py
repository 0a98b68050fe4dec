"""`lbbench k8s render|pack`: the experiment on a real Kubernetes cluster.

render CONFIG -o DIR   manifests (Namespaces, workloads, Services, Ingress, the l7-proxy, one Indexed
                       load Job per front end and rate), faults.sh, run.sh, NOTES.md and config.toml
pack DIR               print a generator part (`lbbench load --out DIR`) as an armored block on stdout,
                       as a load Job pod does, so that `kubectl logs` collects it for `lbbench merge`
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lbbench.errors import UserError


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="k8s_command", metavar="SUBCOMMAND", required=True)
    r = sub.add_parser("render", help="write Kubernetes manifests and scripts for CONFIG into DIR",
                       description="Write Kubernetes manifests and scripts for CONFIG into DIR.")
    r.add_argument("config", type=Path, metavar="CONFIG", help="an lbbench config (configs/*.toml)")
    r.add_argument("-o", "--out", type=Path, required=True, metavar="DIR", help="folder to write into")
    r.add_argument("--image", metavar="REGISTRY/lbbench:TAG",
                   help="the lbbench container image the cluster's nodes can pull (default: lbbench:VERSION, "
                        "built from the Dockerfile: docker build, tag and push it to your registry, or "
                        "'kind load docker-image' it into a kind cluster; see README)")
    r.add_argument("--namespace", help="cluster namespace for the config's 'default' (default: lbbench-CLUSTERNAME)")
    r.add_argument("-p", "--parallelism", type=int, default=3, metavar="P",
                   help="generator parts: pods of each load Job, each sending every P-th request (default 3)")
    r.add_argument("--ingress-class", help="ingressClassName of the Ingress (default: the config's)")
    r.add_argument("--ingress-controller", default="auto",
                   choices=("auto", "ingress-nginx", "haproxy-ingress", "haproxytech", "none"),
                   help="whose annotations carry [proxy] maxconn/queue/balance (default: from the class name)")
    r.add_argument("--ingress-url", metavar="URL",
                   help="in-cluster URL of your Ingress controller: adds a load Job through it")
    r.add_argument("--lb-address", metavar="HOST", help="external address of the LoadBalancer Service (via = LB)")
    r.add_argument("--proxy", action=argparse.BooleanOptionalAction, default=None,
                   help="render lbbench's l7-proxy Deployment (default: when l7-proxy is in run.frontends)")
    k = sub.add_parser("pack", help="print a part folder (lbbench load --out) as an armored block on stdout",
                       description="Print a part folder (lbbench load --out) as an armored block on stdout.")
    k.add_argument("folder", type=Path, metavar="DIR", help="folder written by 'lbbench load --out'")
    k.add_argument("--frontend", default="kube-proxy", help="front-end label of this phase (default kube-proxy)")
    k.add_argument("--repeat", type=int, default=0, help="repeat number of this phase (default 0)")


def run(args: argparse.Namespace) -> int:
    if args.k8s_command == "pack":
        from lbbench.k8s.parts import pack

        pack(args.folder, args.frontend, args.repeat, sys.stdout)
        return 0
    return _render(args)


def _render(args: argparse.Namespace) -> int:
    from lbbench.config.parse import load_config
    from lbbench.k8s.render import RenderOptions, render, write

    config = load_config(args.config)
    image = {"image": args.image} if args.image else {}
    opts = RenderOptions(**image, namespace=args.namespace, parallelism=args.parallelism,
                         ingress_class=args.ingress_class,
                         ingress_controller=args.ingress_controller, ingress_url=args.ingress_url,
                         lb_address=args.lb_address, with_proxy=args.proxy)
    try:
        rendered = render(config, opts)
        paths = write(rendered, args.out)
    except ValueError as e:
        raise UserError(str(e)) from None
    except OSError as e:
        raise UserError(f"cannot write {args.out}: {e.strerror or e}") from None
    for path in paths:
        print(path)
    for p in rendered.phases:
        print(f"load Job {p.job}: {p.frontend} @ {p.rate_rps:g} rps, {p.parallelism} part(s) x {p.workers} "
              f"worker(s) -> {p.url}")
    for note in rendered.notes:
        print(f"note: {note}", file=sys.stderr)
    print(f"next: push the image ({opts.image}), then: sh {args.out}/run.sh PARTS_DIR  (see {args.out}/NOTES.md)")
    return 0
