"""An experiment: every chosen front end (x rate x repeat) as its own phase, then the results.

Ctrl-C or SIGTERM stops the current phase's load, tears down, writes everything measured so
far with `complete: false`. Results are rewritten after every phase, so a crash loses at most
the phase in flight.
"""

from __future__ import annotations

import asyncio
import signal
from dataclasses import dataclass
from pathlib import Path

from lbbench.config.parse import Config
from lbbench.frontends.registry import frontend_class
from lbbench.model.names import KERNEL_FRONTENDS
from lbbench.run.collect import write_results
from lbbench.run.live import LiveView
from lbbench.run.phase import Phase, PhaseKey, PhaseRecord, phase_rates
from lbbench.system.netns import in_private_netns, netns_unavailable_reason


@dataclass(frozen=True)
class RunOptions:
    out: Path
    frontends: tuple[str, ...]
    quiet: bool = False


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


async def run_experiment(config: Config, opts: RunOptions) -> tuple[Path, bool]:
    live = LiveView(opts.quiet)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    current: list[Phase] = []

    def on_signal() -> None:
        live.say("[yellow]stopping: tearing down and writing what was measured[/]")
        stop.set()
        for p in current:
            p.request_stop()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    late = [ev for ev in config.events if ev.at_s >= config.run.duration_s]
    for ev in late:
        live.say(f"[yellow]warning[/]: event {ev.action} {ev.target} at {ev.at_s:g}s is after the load's end "
                 f"({config.run.duration_s:g}s) and will not fire")
    skipped = {n: r for n in opts.frontends if (r := skip_reason(n)) is not None}
    for name, reason in skipped.items():
        live.say(f"[yellow]skipping {name}[/]: {reason}")
    runnable = [n for n in opts.frontends if n not in skipped]
    keys = [PhaseKey(n, rate, rep) for rate in phase_rates(config) for n in runnable
            for rep in range(config.run.repeat)]
    records: list[PhaseRecord] = []
    meta = {"config_file": config.path, "in_netns": in_private_netns(), "frontends_requested": list(opts.frontends)}
    try:
        for i, key in enumerate(keys, 1):
            if stop.is_set():
                break
            cls = frontend_class(key.frontend)
            assert not isinstance(cls, str)
            phase = Phase(config, key, cls, opts.out / "frontends" / key.frontend, in_private_netns(),
                          on_progress=live.on_progress)
            current[:] = [phase]
            record = await _run_phase(phase, live, i, len(keys), config)
            records.append(record)
            write_results(opts.out, config, records, skipped, False, meta)
    finally:
        live.stop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    complete = not stop.is_set() and all(r.complete for r in records) and len(records) == len(keys)
    write_results(opts.out, config, records, skipped, complete, meta)
    _report(opts.out, live)
    return opts.out, complete


def _report(out: Path, live: LiveView) -> None:
    """The report is derived from the files; failing to draw must never lose a run's results."""
    from lbbench.report import write_report

    try:
        paths = write_report(out)
    except Exception as e:
        live.say(f"[yellow]warning[/]: could not write the report ({type(e).__name__}: {e}); "
                 f"the results are complete; try `lbbench report {out}`")
        return
    live.say(f"report: {paths.html}")


async def _run_phase(phase: Phase, live: LiveView, i: int, n: int, config: Config) -> PhaseRecord:
    task = asyncio.create_task(phase.run())
    while phase.controller is None and not task.done():
        await asyncio.sleep(0.01)
    if phase.controller is not None:
        phase.controller.log.listeners.append(live.on_event)
    live.start_phase(i, n, phase.key.label, config.run.duration_s, phase.controller)
    record = await task
    if record.error:
        live.say(f"[red]{phase.key.label} failed[/]: {record.error}")
    elif record.load is not None:
        s = record.load.summary
        errors = {k: v for k, v in s.errors.items() if v}
        p99 = s.latency_s["p99"]
        live.end_phase(f"  {phase.key.label}: {s.requests} requests, {s.ok} ok, errors {errors or 0}, "
                       f"p99 {p99 * 1e3 if p99 is not None else float('nan'):.1f} ms")
        if s.generator_saturated:
            live.say(f"[yellow]  warning: the load generator was the bottleneck: {s.saturation_reason}[/]")
    return record
