"""`lbbench run CONFIG`: one experiment over every chosen front end; prints the results folder last."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from lbbench.errors import UserError

DEFAULT_RESULTS = Path("results")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="experiment config (TOML); see configs/README.md")
    p.add_argument("--out", type=Path, help="results folder (default: results/<UTC time>-<config name>/)")
    p.add_argument("--frontends", help="comma-separated front ends, overriding [run].frontends "
                   "(userspace-dnat, kernel-nftables, kernel-iptables, ebpf-socketlb, haproxy-tcp, l7-proxy, "
                   "haproxy, nginx, httpd)")
    p.add_argument("--duration", help="load duration per phase, overriding [run].duration (e.g. 10s)")
    p.add_argument("--seed", type=int, help="seed, overriding [run].seed")
    p.add_argument("--repeat", type=int, help="repeats per phase, overriding [run].repeat")
    p.add_argument("--quiet", action="store_true", help="no live progress (for CI)")
    p.add_argument("--no-netns", action="store_true", help="do not enter a private network namespace "
                   "(kernel front ends are then skipped)")


def _overrides(args: argparse.Namespace) -> dict[str, object]:
    from lbbench.model.names import FRONTENDS
    from lbbench.model.servicetime import parse_duration

    run: dict[str, object] = {}
    if args.frontends:
        names = tuple(n.strip() for n in args.frontends.split(",") if n.strip())
        unknown = [n for n in names if n not in FRONTENDS]
        if unknown or not names:
            raise UserError(f"--frontends: unknown front end {unknown[0] if unknown else '(none)'!r}; "
                            f"expected some of {', '.join(FRONTENDS)}")
        run["frontends"] = names
    if args.duration:
        try:
            run["duration_s"] = parse_duration(args.duration)
        except ValueError as e:
            raise UserError(f"--duration: {e}") from None
    if args.seed is not None:
        run["seed"] = args.seed
    if args.repeat is not None:
        if args.repeat < 1:
            raise UserError("--repeat must be >= 1")
        run["repeat"] = args.repeat
    return run


def run(args: argparse.Namespace) -> int:
    from lbbench.config.parse import load_config

    config = load_config(args.config)
    changes = _overrides(args)
    if changes:
        config = dataclasses.replace(config, run=dataclasses.replace(config.run, **changes))  # type: ignore[arg-type]

    import uvloop

    from lbbench.model.names import KERNEL_FRONTENDS
    from lbbench.results.files import new_results_dir
    from lbbench.run.experiment import RunOptions, run_experiment
    from lbbench.system.netns import in_private_netns, netns_unavailable_reason
    out = args.out or new_results_dir(DEFAULT_RESULTS, config.name)
    out.mkdir(parents=True, exist_ok=True)
    wants_kernel = any(f in KERNEL_FRONTENDS for f in config.run.frontends)
    if wants_kernel and not args.no_netns and not in_private_netns() and netns_unavailable_reason() is None:
        return _reexec_in_netns(args, out)
    folder, complete = uvloop.run(run_experiment(config, RunOptions(out, config.run.frontends, args.quiet)))
    print(folder)
    return 0 if complete else 1


def _reexec_in_netns(args: argparse.Namespace, out: Path) -> int:
    """Run this very command inside a private user+net namespace; forward signals; same exit code."""
    from lbbench.system.netns import rerun_inside

    return rerun_inside("run-in-netns", str(out))
