"""Turn the phases' records into the results folder's files (written after every phase)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from lbbench.config.schema import Config
from lbbench.results.files import buckets, frontend_summary, load_ran_s, merge_repeats, metadata
from lbbench.results.theory_fit import judging, theory_inputs, theory_section
from lbbench.results.writer import FolderContents, WriteFailure, summary_document, write_folder
from lbbench.run.phase import PhaseRecord
from lbbench.system.hoststat import HostCpu, host_cpu

PHASE_COLS = ("frontend", "rate_rps", "repeat")


def _tag(df: pd.DataFrame, r: PhaseRecord) -> pd.DataFrame:
    return df.assign(frontend=r.key.series, rate_rps=r.key.rate_rps, repeat=r.key.repeat)


def phase_rows(r: PhaseRecord) -> pd.DataFrame | None:
    return None if r.load is None else _tag(r.load.rows, r)


def phase_events(r: PhaseRecord) -> pd.DataFrame:
    df = pd.DataFrame([e.__dict__ for e in r.events], columns=["at_s", "kind", "target", "detail"])
    return _tag(df.sort_values("at_s", kind="stable", ignore_index=True), r)


def write_results(out: Path, config: Config, records: list[PhaseRecord], skipped: dict[str, str],
                  complete: bool, meta_extra: dict[str, Any]) -> list[WriteFailure]:
    """Write (or rewrite) the results folder of the phases so far; returns the files that failed."""
    return write_folder(out, folder_contents(config, records, skipped, complete, meta_extra))


def folder_contents(config: Config, records: list[PhaseRecord], skipped: dict[str, str], complete: bool,
                    meta_extra: dict[str, Any]) -> FolderContents:
    rows = [df for r in records if (df := phase_rows(r)) is not None]
    events = pd.concat([phase_events(r) for r in records], ignore_index=True) if records else pd.DataFrame(
        columns=["at_s", "kind", "target", "detail", *PHASE_COLS])
    summary = summary_document(
        complete=complete, metadata=metadata(config.run.seed, meta_extra), config=_config_section(config),
        phases=[_phase_entry(r, config) for r in records], frontends=_by_frontend(records, config),
        skipped=skipped, notes=[])
    return FolderContents(summary=summary, rows=pd.concat(rows, ignore_index=True) if rows else pd.DataFrame(),
                          events=events, timeseries=_timeseries(records, config.run.duration_s),
                          config_file=Path(config.path))


def _config_section(config: Config) -> dict[str, Any]:
    return {"name": config.name, "duration_s": config.run.duration_s, "frontends": list(config.run.frontends),
            "load": {"arrivals": config.load.arrivals, "connections": str(config.load.connections),
                     "service": config.load.service,
                     "via": list(config.load.vias) if len(config.load.vias) > 1 else config.load.via},
            "repeat": config.run.repeat, "cluster": "lbbench",
            "endpoint_sync_delay_s": config.run.endpoint_sync_delay_s,
            "restart_delay_s": config.run.restart_delay_s, "theory_inputs": theory_inputs(config),
            "report": judging(config)}


def _phase_entry(r: PhaseRecord, config: Config) -> dict[str, Any]:
    entry: dict[str, Any] = {"frontend": r.key.series, "rate_rps": r.key.rate_rps, "repeat": r.key.repeat,
                             **({"via": r.key.via} if r.key.via else {}), "target": r.target,
                             "complete": r.complete, "error": r.error, "counters": r.counters}
    if r.load is not None:
        gen = r.load.summary.to_dict()
        entry.update(frontend_summary(r.load.rows, phase_events(r), config.run.duration_s, r.cpu_s, gen,
                                      ran_s=_ran_s(r, config)))
        entry["generator"] = gen
        entry["zero_load"] = r.zero_load
        entry["host_cpu"] = _host_cpu([r])
        entry["theory"] = theory_section(config, r.key.frontend, r.key.rate_rps, entry["latency_s"],
                                         r.load.rows, r.zero_load)
    return entry


def _by_frontend(records: list[PhaseRecord], config: Config) -> dict[str, Any]:
    """Per front end, at the first rate: stats over the merged raw rows of all repeats, plus spread."""
    out: dict[str, Any] = {}
    first_rate = records[0].key.rate_rps if records else 0.0
    names = list(dict.fromkeys(r.key.series for r in records))
    for name in names:
        mine = [r for r in records if r.key.series == name and r.key.rate_rps == first_rate and r.load]
        if not mine:
            continue
        rows = pd.concat([r.load.rows for r in mine if r.load is not None], ignore_index=True)
        events = pd.concat([phase_events(r) for r in mine], ignore_index=True)
        cpu: dict[str, float] = {}
        for r in mine:
            for k, v in r.cpu_s.items():
                cpu[k] = cpu.get(k, 0.0) + v / len(mine)
        gen = mine[0].load.summary.to_dict() if mine[0].load is not None else {}
        gen["generator_saturated"] = any(r.load.summary.generator_saturated for r in mine if r.load)
        entry = frontend_summary(rows, events, config.run.duration_s * len(mine), cpu, gen,
                                 ran_s=sum(_ran_s(r, config) for r in mine))
        merge_repeats(entry, [_phase_entry(r, config) for r in mine])
        entry["complete"] = all(r.complete for r in mine)
        zl = [r.zero_load for r in mine if r.zero_load and r.zero_load["overhead_mean_s"] is not None]
        entry["zero_load"] = zl[0] if zl else None
        entry["host_cpu"] = _host_cpu(mine)
        if mine[0].key.via:
            entry["via"] = mine[0].key.via
        entry["theory"] = theory_section(config, mine[0].key.frontend, first_rate, entry["latency_s"], rows,
                                         entry["zero_load"])
        out[name] = entry
    return out


def _ran_s(r: PhaseRecord, config: Config) -> float:
    s = r.load.summary if r.load is not None else None
    return load_ran_s(config.run.duration_s, s is not None and s.stopped, s.actual_duration_s if s else 0.0)


def _host_cpu(records: list[PhaseRecord]) -> HostCpu | None:
    """Hypervisor steal during the load (t >= 0) of these phases: the mean, and the worst 1 s of any."""
    parts = [host_cpu([s["host_steal"] for s in r.samples if "host_steal" in s and s["t_s"] >= 0]) for r in records]
    found = [p for p in parts if p is not None]
    if not found:
        return None
    return HostCpu(steal_fraction=sum(p["steal_fraction"] for p in found) / len(found),
                   steal_max_1s=max(p["steal_max_1s"] for p in found))


def _timeseries(records: list[PhaseRecord], duration_s: float) -> pd.DataFrame:
    parts = []
    for r in records:
        if r.load is None:
            continue
        b = buckets(r.load.rows, duration_s)
        if r.samples:
            s = pd.DataFrame(r.samples).sort_values("t_s")
            b = pd.merge_asof(b, s, on="t_s", direction="backward")
        parts.append(_tag(b, r))
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()
