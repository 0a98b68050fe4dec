"""An experiment: every chosen front end (x rate x repeat) as its own phase, then the results.

Ctrl-C or SIGTERM stops the current phase's load, tears down, writes everything measured so
far with `complete: false`. Results are rewritten after every phase, so a crash loses at most
the phase in flight. A results file that cannot be written (a full disk) stops the run: what
was measured stays in memory, every file that fits is written, and the run ends incomplete.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from lbbench.config.schema import Config
from lbbench.frontends.registry import frontend_class
from lbbench.model.names import KERNEL_FRONTENDS
from lbbench.results.writer import WriteFailure
from lbbench.run.collect import write_results
from lbbench.run.live import LiveView
from lbbench.run.phase import Phase, PhaseKey, PhaseRecord, phase_rates
from lbbench.system.addrlock import blocks_of
from lbbench.system.compiled import hot_paths_label
from lbbench.system.netns import (
    find_tool,
    in_private_netns,
    namespace_unavailable_reason,
    netns_unavailable_reason,
)


@dataclass(frozen=True)
class RunOptions:
    out: Path
    frontends: tuple[str, ...]
    quiet: bool = False
    address_blocks: tuple[str, ...] = ()  # claimed with a lock when the run shares the host's namespace


def address_blocks(config: Config) -> list[str]:
    """The /16 blocks a run binds addresses in: nodes' pods, Service and LB IPs, Ingress, DNS."""
    c = config.cluster
    addrs = [c.node_network(n) for n in range(c.nodes)]
    addrs += [c.service_cidr, c.lb_cidr, c.ingress_ip, c.dns.rpartition(":")[0]]
    addrs += [s.cluster_ip for s in config.services if s.cluster_ip is not None]
    return blocks_of(addrs)


def overloaded_rates(config: Config) -> list[tuple[float, float]]:
    """(rate, utilisation) of every phase rate at or above the backing pods' capacity."""
    from lbbench.model.servicetime import ServiceTime
    from lbbench.results.theory_fit import theory_inputs

    ti = theory_inputs(config)
    if ti is None:
        return []
    mean_s = ServiceTime.parse(str(ti["service"])).mean_s
    capacity = ti["pods"] * ti["slots"] / mean_s if mean_s > 0 else float("inf")
    return [(rate, rate / capacity) for rate in phase_rates(config) if rate / capacity >= 1]


def isolation(opts: RunOptions) -> dict[str, Any]:
    """How this run is kept apart from others, and why network faults cannot play if they cannot."""
    if in_private_netns():
        return {"isolation": "private network namespace", "network_faults_unavailable": nft_unavailable_reason()}
    why = namespace_unavailable_reason() or "--no-netns was given"
    return {"isolation": f"address blocks claimed with a lock: {', '.join(opts.address_blocks)}",
            "network_faults_unavailable": f"the run is not in a private network namespace ({why}); "
                                          "nft rules are never written to the host's netfilter"}


def phase_keys(config: Config, runnable: list[str]) -> list[PhaseKey]:
    """Every phase in run order: rate, then access path, then front end, then repeat."""
    return [PhaseKey(n, rate, rep, path) for rate in phase_rates(config) for via in config.load.vias
            for n in runnable if (path := access_label(config, n, via)) is not None
            for rep in range(config.run.repeat)]


def access_label(config: Config, name: str, via: str) -> str | None:
    """The phase's access path in a `via` sweep ("" without one), None to skip the phase.

    An L7 front end is reached through its Ingress whatever the Service type, so a sweep runs it
    once (at the first path's turn), labelled "Ingress", not once per path that would measure the same thing.
    """
    if len(config.load.vias) < 2:
        return ""
    cls = frontend_class(name)
    if isinstance(cls, type) and cls.layer == "l7":
        return "Ingress" if via == config.load.vias[0] else None
    return via


def nft_unavailable_reason() -> str | None:
    return None if find_tool("nft") is not None else "nft (nftables) is not installed"


def skip_reason(name: str) -> str | None:
    cls = frontend_class(name)
    if isinstance(cls, str):
        return cls
    if name in KERNEL_FRONTENDS:
        if (why := netns_unavailable_reason()) is not None:
            return f"needs a private user+network namespace: {why}"
        if not in_private_netns():
            return "kernel front ends run only inside lbbench's private network namespace"
    return cls.unavailable_reason()


@contextlib.contextmanager
def stopped_by_signals(on_signal: Callable[[], None]) -> Iterator[None]:
    """SIGINT and SIGTERM call `on_signal` (and do not kill the process) while inside."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    try:
        yield
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


class Experiment:
    """The phase loop: each phase runs, then the folder is rewritten with every phase so far."""

    def __init__(self, config: Config, opts: RunOptions) -> None:
        self.config = config
        self.opts = opts
        self.live = LiveView(opts.quiet)
        self.stopped = False
        self.current: Phase | None = None
        self.records: list[PhaseRecord] = []
        self.unwritten: list[WriteFailure] = []
        # started_utc: the run's start, not the time of the last rewrite of the folder
        self.meta: dict[str, Any] = {"config_file": config.path, "in_netns": in_private_netns(),
                                     "frontends_requested": list(opts.frontends), **isolation(opts),
                                     "hot_paths": hot_paths_label(),
                                     "started_utc": datetime.now(UTC).isoformat(timespec="seconds")}
        self.skipped = {n: r for n in opts.frontends if (r := skip_reason(n)) is not None}
        runnable = [n for n in opts.frontends if n not in self.skipped]
        self.keys = phase_keys(config, runnable)

    def request_stop(self) -> None:
        self.live.say("[yellow]stopping: tearing down and writing what was measured[/]")
        self.stopped = True
        if self.current is not None:
            self.current.request_stop()

    @property
    def complete(self) -> bool:
        return (not self.stopped and not self.unwritten and len(self.records) == len(self.keys)
                and all(r.complete for r in self.records))

    async def run(self) -> bool:
        self._warn_before_start()
        try:
            with stopped_by_signals(self.request_stop):
                await self._phases()
        finally:
            self.live.stop()
        self._write(self.complete)
        if not self.unwritten:
            report_folder(self.opts.out, self.live)
        return self.complete

    def _warn_before_start(self) -> None:
        for rate, rho in overloaded_rates(self.config):
            self.live.warn(f"{rate:g} rps is utilisation {rho:.2f} >= 1 of the pods' capacity: "
                           "queues grow for as long as the run lasts (latencies depend on the run length, and no "
                           "queueing model applies)")
        for ev in self.config.events:
            if ev.at_s >= self.config.run.duration_s:
                self.live.warn(f"event {ev.action} {ev.target} at {ev.at_s:g}s is after the "
                               f"load's end ({self.config.run.duration_s:g}s) and will not fire")
        for name, reason in self.skipped.items():
            self.live.say(f"[yellow]skipping {name}[/]: {reason}")

    async def _phases(self) -> None:
        for i, key in enumerate(self.keys, 1):
            if self.stopped or self.unwritten:
                return
            cls = frontend_class(key.frontend)
            assert not isinstance(cls, str)
            self.current = Phase(self.config, key, cls, self.opts.out / "frontends" / key.frontend,
                                 in_private_netns(), on_progress=self.live.on_progress,
                                 no_network_faults=self.meta["network_faults_unavailable"])
            self.records.append(await _run_phase(self.current, self.live, i, len(self.keys), self.config))
            self._write(False)

    def _write(self, complete: bool) -> None:
        """Write every phase so far; a failure is said once per file and stops the phase loop."""
        failures = write_results(self.opts.out, self.config, self.records, self.skipped, complete, self.meta)
        for f in failures:
            if f.path not in {u.path for u in self.unwritten}:
                self.live.say(f"[red]could not write {f}[/]: no further phase starts; what was measured "
                              "stays in memory and every file that fits is written at the end")
        self.unwritten = failures or self.unwritten


async def run_experiment(config: Config, opts: RunOptions) -> tuple[Path, bool, list[WriteFailure]]:
    """Run every phase; returns the folder, whether the run is complete, and the files not written."""
    if config.scale is not None:  # a Service-count sweep instead of the load phases
        from lbbench.run.scale_run import run_scale_experiment

        return await run_scale_experiment(config, opts)
    experiment = Experiment(config, opts)
    complete = await experiment.run()
    return opts.out, complete, experiment.unwritten


def report_folder(out: Path, live: LiveView) -> None:
    """The report is derived from the files; failing to draw must never lose a run's results."""
    from lbbench.report import write_report

    try:
        paths = write_report(out)
    except Exception as e:
        live.warn(f"could not write the report ({type(e).__name__}: {e}); the results are complete; "
                  f"try `lbbench report {out}`")
        return
    live.say(f"report: {paths.html}")


async def _run_phase(phase: Phase, live: LiveView, i: int, n: int, config: Config) -> PhaseRecord:
    task = asyncio.create_task(phase.run())
    phase.log.listeners.append(live.on_event)
    while phase.controller is None and not task.done():
        await asyncio.sleep(0.01)
    live.start_phase(i, n, phase.key.label, config.run.duration_s, phase.controller)
    record = await task
    if record.error:
        live.say(f"[red]{phase.key.label} failed[/]: {record.error}")
    elif record.load is not None:
        live.end_phase(_phase_line(phase.key.label, record))
    return record


def _phase_line(label: str, record: PhaseRecord) -> str:
    assert record.load is not None
    s = record.load.summary
    errors = {k: v for k, v in s.errors.items() if v}
    p99 = s.latency_s["p99"]
    line = (f"  {label}: {s.requests} requests, {s.ok} ok, errors {errors or 0}, "
            f"p99 {p99 * 1e3 if p99 is not None else float('nan'):.1f} ms")
    if s.generator_saturated:
        line += f"\n[yellow]  warning: the load generator was the bottleneck: {s.saturation_reason}[/]"
    return line
