"""`lbbench serve pod|dnat|proxy`: run one component on its own, in the foreground.

Each component is a module of this package with `add_arguments(parser)` and `run(args) -> int`,
like the top-level commands; the component itself takes typed settings and knows no flags.
"""

from __future__ import annotations

import argparse
import importlib

from lbbench.errors import UserError

# component -> (module, one-line help)
COMPONENTS = {
    "pod": ("lbbench.commands.serve.pod", "an aiohttp backend pod with a service-time model, slots and faults"),
    "dnat": ("lbbench.commands.serve.dnat", "the userspace random-DNAT L4 forwarder (kube-proxy style)"),
    "proxy": ("lbbench.commands.serve.proxy", "the queueing L7 reverse proxy (lbbench's Ingress); every response "
              "says how long its request waited in the queue (X-Proxy-Queue-Ms) and held the backend slot, "
              "dispatch to response head (X-Proxy-Upstream-Ms)"),
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="component", metavar="COMPONENT", required=True)
    for name, (module_name, help_text) in COMPONENTS.items():
        sp = sub.add_parser(name, help=help_text, description=help_text)
        importlib.import_module(module_name).add_arguments(sp)


def run(args: argparse.Namespace) -> int:
    module_name = COMPONENTS[args.component][0]
    try:
        return int(importlib.import_module(module_name).run(args))
    except ValueError as e:
        raise UserError(str(e)) from None
