"""The `lbbench` command line: parse, call one function, print. No logic lives here.

Each subcommand is a module with `add_arguments(parser)` and `run(args) -> int`; heavy
imports stay inside `run` so that `lbbench --help` is fast.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence
from types import ModuleType

from lbbench import __version__
from lbbench.errors import UserError

# (name, module, one-line help)
COMMANDS: tuple[tuple[str, str, str], ...] = (
    ("run", "lbbench.commands.run", "run an experiment: cluster, front ends, load, failure timeline, results"),
    ("report", "lbbench.commands.report", "regenerate plots and the report of a results folder"),
    ("compare", "lbbench.commands.compare", "compare two results folders side by side"),
    ("doctor", "lbbench.commands.doctor", "which front ends and tools are available here, and why not"),
    ("load", "lbbench.commands.load", "open-loop load against one loopback URL (no coordinated omission)"),
    ("theory", "lbbench.commands.theory", "queueing-theory predictions for each balancing model"),
    ("serve", "lbbench.commands.serve", "run one component on its own: a pod, the DNAT forwarder, the L7 proxy"),
    ("bench", "lbbench.commands.bench", "throughput/overhead suite against HAProxy, nginx, wrk and the kernel"),
    ("k8s", "lbbench.commands.k8s", "render the experiment as Kubernetes manifests"),
    ("merge", "lbbench.commands.merge", "combine a distributed run's generator parts into one results folder"),
)


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, ModuleType]]:
    parser = argparse.ArgumentParser(
        prog="lbbench",
        description=(
            "Measure kube-proxy-style random DNAT (userspace and nftables) against queueing L7 reverse "
            "proxies (lbbench's own, HAProxy, nginx, httpd) on real processes over loopback."
        ),
    )
    parser.add_argument("--version", action="version", version=f"lbbench {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    modules: dict[str, ModuleType] = {}
    for name, module_name, help_text in COMMANDS:
        module = importlib.import_module(module_name)
        p = sub.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(p)
        modules[name] = module
    return parser, modules


def main(argv: Sequence[str] | None = None) -> int:
    parser, modules = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return int(modules[args.command].run(args))
    except UserError as e:
        print(f"lbbench {args.command}: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print(f"lbbench {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # `lbbench ... | head`: the reader left; exit quietly as Unix tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    raise SystemExit(main())
