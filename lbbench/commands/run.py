"""`lbbench run CONFIG`: one experiment over every chosen front end; prints the results folder last."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from lbbench.errors import ConfigError, UserError

if TYPE_CHECKING:
    from lbbench.config.schema import Config

DEFAULT_RESULTS = Path("results")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="experiment config (TOML); see configs/README.md")
    p.add_argument("--out", type=Path, help="results folder, checked writable before anything starts "
                   "(default: results/<UTC time>-<config name>/)")
    p.add_argument("--frontends", help="comma-separated front ends, overriding [run].frontends "
                   "(userspace-dnat, kernel-nftables, kernel-iptables, ebpf-socketlb, haproxy-tcp, l7-proxy, "
                   "haproxy, nginx, httpd)")
    p.add_argument("--duration", help="load duration per phase, overriding [run].duration (e.g. 10s)")
    p.add_argument("--seed", type=int, help="seed, overriding [run].seed (every override is validated as "
                   "the config's own value)")
    p.add_argument("--repeat", type=int, help="repeats per phase, overriding [run].repeat")
    p.add_argument("--quiet", action="store_true", help="no live progress (for CI)")
    p.add_argument("--check", action="append", default=[], metavar="EXPR",
                   help="a pass/fail threshold, repeatable, added to the config's [[checks]]: e.g. "
                   "'l7-proxy.lost == 0', '*.errors_pct < 1', 'userspace-dnat.p99 < 200ms', "
                   "'l7-proxy.theory.mean within 10%%'; exit code 3 when one fails (see configs/README.md)")
    p.add_argument("--no-netns", action="store_true", help="do not enter a private network namespace "
                   "(kernel front ends and network-fault events are then skipped; the run claims its address "
                   "blocks with a lock instead, so two runs never share a pod address)")


# options that override the [run] key of the same name; each is validated as the config's own value
OVERRIDES = ("frontends", "duration", "seed", "repeat")


def _overrides(args: argparse.Namespace) -> dict[str, object]:
    run = {key: getattr(args, key) for key in OVERRIDES if getattr(args, key) is not None}
    if "frontends" in run:
        run["frontends"] = [n.strip() for n in str(args.frontends).split(",") if n.strip()]
    return run


def load_with_overrides(args: argparse.Namespace) -> Config:
    """The config with the command line's overrides, all validated before anything starts.

    An override's error names the option (`--seed: must be >= 0, got -1`), not the file.
    """
    from lbbench.config.parse import load_config

    run = _overrides(args)
    try:
        return load_config(args.config, run)
    except ConfigError as e:
        key = e.key_path.removeprefix("run.").split("[")[0] if e.key_path.startswith("run.") else None
        if key in run:
            raise UserError(f"--{key}: {e.expected}") from None
        if run:  # the file's value may be fine on its own and clash with an override (an event past --duration)
            given = " ".join(f"--{k} {getattr(args, k)}" for k in run)
            raise UserError(f"{e} (with {given})") from None
        raise


def with_checks(config: Config, texts: list[str]) -> Config:
    """The config with the command line's --check expressions after its own [[checks]]."""
    import dataclasses

    from lbbench.report.checks import parse_all

    extra = tuple(parse_all(texts, "--check"))
    return dataclasses.replace(config, report=dataclasses.replace(config.report,
                                                                  checks=config.report.checks + extra))


def run(args: argparse.Namespace) -> int:
    config = with_checks(load_with_overrides(args), args.check)

    import uvloop

    from lbbench.results.files import new_results_dir
    from lbbench.results.writer import writable_folder
    from lbbench.run.experiment import RunOptions, address_blocks, run_experiment
    from lbbench.system.addrlock import claim_blocks
    from lbbench.system.netns import in_private_netns, namespace_unavailable_reason

    out = writable_folder(args.out or new_results_dir(DEFAULT_RESULTS, config.name))
    if not args.no_netns and not in_private_netns() and namespace_unavailable_reason() is None:
        return _reexec_in_netns(args, out)  # every run in its own namespace: isolated, faults on its netfilter
    opts = RunOptions(out, config.run.frontends, args.quiet)
    if in_private_netns():
        folder, complete, unwritten = uvloop.run(run_experiment(config, opts))
    else:  # the host's namespace: claim the run's address blocks so no other run binds them meanwhile
        def waiting(block: str, holder: str) -> None:
            print(f"waiting for address block {block}, held by {holder}", file=sys.stderr, flush=True)

        with claim_blocks(address_blocks(config), waiting) as blocks:
            opts = dataclasses.replace(opts, address_blocks=tuple(blocks))
            folder, complete, unwritten = uvloop.run(run_experiment(config, opts))
    for failure in unwritten:  # said even with --quiet: these results are not (all) on disk
        print(f"lbbench run: error: could not write {failure} (the files that fit were written, "
              "summary.json first; complete: false)", file=sys.stderr)
    print(folder)
    from lbbench.report.checks import recorded, say

    failed_check = say(recorded(folder), "run")
    return failed_check or (0 if complete else 1)


def _reexec_in_netns(args: argparse.Namespace, out: Path) -> int:
    """Run this very command inside a private user+net namespace; forward signals; same exit code."""
    from lbbench.system.netns import rerun_inside

    return rerun_inside("run-in-netns", str(out))
