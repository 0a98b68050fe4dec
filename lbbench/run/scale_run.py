"""``lbbench run`` of a config with ``[scale]``: the pods, the sweep, the results folder, the report.

The Services under test are served by ``endpoints_per_service`` pods of the load Service's
template (its service time and slots), started once for the whole sweep. The results folder
is the usual one (summary.json with no load phases) plus the ``scale`` section and
``scale_connects.parquet``.
"""

from __future__ import annotations

import asyncio
import functools
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from lbbench.config.schema import Config
from lbbench.model.addresses import HostPort
from lbbench.results.writer import WriteFailure, write_folder
from lbbench.run.collect import folder_contents
from lbbench.run.live import LiveView
from lbbench.run.scale import OnCell, run_sweep
from lbbench.system.netns import in_private_netns
from lbbench.system.procs import Child, Supervisor

POD_READY_S = 90.0

if TYPE_CHECKING:
    from lbbench.run.experiment import RunOptions


def _pod_args(config: Config) -> tuple[str, int]:
    svc = config.service(config.load.service)
    workloads = config.backing_workloads(svc)
    template = workloads[0].template if workloads else None
    return (str(template.service), template.slots) if template else ("const:0ms", 1)


async def _start_pods(sup: Supervisor, config: Config, n: int) -> list[tuple[Child, HostPort]]:
    from lbbench.cluster.standalone import start_pod

    service, slots = _pod_args(config)
    # a busy machine can take many seconds to import a pod: the sweep waits for them, once
    start = functools.partial(start_pod, sup, service=service, slots=slots, ready_timeout_s=POD_READY_S)
    return [await asyncio.to_thread(start, f"scale-pod-{i}") for i in range(n)]


async def run_scale_experiment(config: Config, opts: RunOptions) -> tuple[Path, bool, list[WriteFailure]]:
    """The sweep, then the results folder and the report; as run_experiment returns.

    The folder is rewritten after every cell (front end x count) with `complete: false`, so an
    interrupted or crashed sweep keeps every cell it finished.
    """
    from lbbench.run.experiment import report_folder, skip_reason, stopped_by_signals

    assert config.scale is not None
    live = LiveView(opts.quiet)
    unavailable = {n: r for n in opts.frontends if (r := skip_reason(n)) is not None}
    for name, reason in unavailable.items():
        live.say(f"[yellow]skipping {name}[/]: {reason}")
    runnable = tuple(n for n in opts.frontends if n not in unavailable)
    meta = {"config_file": config.path, "in_netns": in_private_netns(), "frontends_requested": list(opts.frontends)}
    latest: list[tuple[dict[str, Any], pd.DataFrame]] = [({}, pd.DataFrame())]

    def write(section: dict[str, Any], rows: pd.DataFrame, complete: bool) -> list[WriteFailure]:
        latest[0] = (section, rows)
        contents = folder_contents(config, [], unavailable, complete, meta)
        contents.summary["scale"] = section
        unwritten = write_folder(opts.out, contents)
        rows.to_parquet(opts.out / "scale_connects.parquet", index=False)
        return unwritten

    sweep = asyncio.ensure_future(_sweep(config, runnable, live, lambda s, r: write(s, r, False)))

    def stop() -> None:
        sweep.cancel()

    with stopped_by_signals(stop):
        try:
            section, rows = await sweep
        except asyncio.CancelledError:
            live.say("[yellow]stopped[/]: writing the cells measured so far (complete: false)")
            section, rows = latest[0]
    complete = bool(section) and not sweep.cancelled()
    unwritten = write(section, rows, complete)
    if not unwritten:
        report_folder(opts.out, live)
    return opts.out, complete and not unwritten, unwritten


async def _sweep(config: Config, frontends: tuple[str, ...], live: LiveView, on_cell: OnCell) \
        -> tuple[dict[str, Any], pd.DataFrame]:
    assert config.scale is not None
    with Supervisor() as sup:
        pods = await _start_pods(sup, config, config.scale.endpoints_per_service)
        try:
            return await run_sweep(config.scale, config.run.seed, frontends, sup, [addr for _, addr in pods],
                                   live.say, on_cell)
        finally:
            await asyncio.gather(*(child.stop(2.0) for child, _ in pods))
            await sup.aclose()
