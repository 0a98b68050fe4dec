"""Combine the generator parts of a distributed run into one results folder, exactly.

Each part is what one load Job pod measured: every P-th request of the one seeded schedule
(`lbbench load --part I/P`). Merging concatenates the raw rows and adds the histograms; every
percentile of the merged folder is computed from the merged rows (or the merged histogram),
never averaged over parts. Before merging, the parts of a phase must agree on everything that
defines the schedule, be distinct, and (unless `partial`) all be there; each row is matched to
its request of the schedule, so a part merged twice or taken from another run is refused.

The folder has the layout and schema of `lbbench run` (lbbench.results.files), so `lbbench report`
and `lbbench compare` work on it; each phase is one (front end, rate, repeat).
"""

from __future__ import annotations

import collections
import dataclasses
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from lbbench.config.schema import Config
from lbbench.errors import UserError
from lbbench.k8s.parts import PartFiles, part_of, read_parts
from lbbench.load.histogram import LogHistogram
from lbbench.load.schedule import build_schedule
from lbbench.load.spec import LoadSpec
from lbbench.load.summary import latency_stats, short_stats
from lbbench.results.files import buckets, frontend_summary, load_ran_s, merge_repeats, metadata
from lbbench.results.writer import FolderContents, summary_document

SCHEDULE_KEYS = ("rate_rps", "duration_s", "arrivals", "steps", "seed", "closed_loop_users", "think_time_s")
REQUEST_KEYS = ("path", "connections", "timeout_s", "connect_timeout_s")
MATCH_TOL_S = 1e-6  # rows keep intended times relative to t=0: equal to the schedule's within float error
START_SKEW_S = 1.0
EVENT_COLUMNS = ("at_s", "kind", "target", "detail")
# which of lbbench's own front ends a cluster front end should behave like (for the theory section)
THEORY_NAME = {"kube-proxy": "kernel-nftables", "l7-proxy": "l7-proxy"}

# what `lbbench run` measures beside the load and a cluster's load Jobs do not: same keys, no value
NOT_MEASURED_HERE: dict[str, Any] = {"zero_load": None, "host_cpu": None}

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True, eq=False)
class Part:
    source: str
    frontend: str
    repeat: int
    index: int
    count: int
    summary: dict[str, Any]  # summary.json of `lbbench load --out` (with "spec")
    rows: pd.DataFrame
    latency: LogHistogram
    lateness: LogHistogram

    @property
    def spec(self) -> dict[str, Any]:
        spec: dict[str, Any] = self.summary["spec"]
        return spec

    @property
    def rate_rps(self) -> float:
        return float(self.spec["rate_rps"])

    @property
    def label(self) -> str:
        return f"part {self.index}/{self.count} ({self.source})"


@dataclass(frozen=True, eq=False)
class MergedPhase:
    frontend: str
    rate_rps: float
    repeat: int
    parts: tuple[Part, ...]
    count: int  # P: parts the schedule was split into
    rows: pd.DataFrame  # every part's rows, with a `part` column, sorted by intended send time
    latency: LogHistogram  # sum of the parts' histograms
    lateness: LogHistogram
    scheduled: int | None  # requests in the whole schedule (None: closed loop)
    notes: tuple[str, ...]

    @property
    def missing_parts(self) -> tuple[int, ...]:
        have = {p.index for p in self.parts}
        return tuple(i for i in range(self.count) if i not in have)

    @property
    def complete(self) -> bool:
        return not self.missing_parts and all(bool(p.summary.get("complete", True)) for p in self.parts)


# -- reading ---------------------------------------------------------------------------------------
def load_part(pf: PartFiles, default_frontend: str) -> Part:
    try:
        summary = json.loads(pf.files["summary.json"])
        rows = pd.read_parquet(io.BytesIO(pf.files["requests.parquet"]))
    except (ValueError, OSError) as e:
        raise UserError(f"{pf.source}: unreadable part: {e}") from None
    if not isinstance(summary, dict) or not isinstance(summary.get("spec"), dict):
        raise UserError(f"{pf.source}: summary.json has no 'spec' (expected a folder written by 'lbbench load --out')")
    if not summary["spec"].get("record_rows", True):
        raise UserError(f"{pf.source}: was run with --no-rows; merging needs the raw rows")
    index, count = part_of(summary)
    for key, value in (("part_index", index), ("part_count", count)):
        if key in pf.header and int(pf.header[key]) != value:
            raise UserError(f"{pf.source}: the block says {key} {pf.header[key]} but its summary.json says {value}")
    if not 0 <= index < count:
        raise UserError(f"{pf.source}: part index {index} is not in 0..{count - 1}")
    hist = {k: LogHistogram.from_dict(summary[k]) for k in ("latency_histogram", "lateness_histogram")}
    return Part(pf.source, str(pf.header.get("frontend") or default_frontend), int(pf.header.get("repeat", 0)),
                index, count, summary, rows, hist["latency_histogram"], hist["lateness_histogram"])


def read_all(paths: Sequence[Path], default_frontend: str) -> list[Part]:
    parts = []
    for path in paths:
        if not path.exists():
            raise UserError(f"{path}: no such file or folder")
        parts += [load_part(pf, default_frontend) for pf in read_parts(path)]
    return parts


# -- checking and merging ----------------------------------------------------------------------------------
def schedule_of(spec: dict[str, Any]) -> FloatArray | None:
    """The whole seeded schedule the parts were cut from (None in closed loop: there is none)."""
    if int(spec.get("closed_loop_users", 0)) > 0:
        return None
    names = {f.name for f in dataclasses.fields(LoadSpec)}
    data = {k: v for k, v in spec.items() if k in names}
    data["target"] = "127.0.0.1:80"  # the schedule does not depend on where it is sent
    data.update({k: v for k, v in (("part_index", 0), ("part_count", 1), ("allow_remote", False)) if k in names})
    try:
        return build_schedule(LoadSpec.from_dict(data))
    except (KeyError, TypeError, ValueError) as e:
        raise UserError(f"cannot rebuild the schedule from the parts' spec: {e}") from None


def match_schedule(intended_s: FloatArray, schedule: FloatArray) -> npt.NDArray[np.int64]:
    """Index into `schedule` of each intended send time (nearest), or -1 where none is within MATCH_TOL_S."""
    if schedule.size == 0:
        return np.full(intended_s.shape, -1, dtype=np.int64)
    pos = np.searchsorted(schedule, intended_s)
    lo = np.clip(pos - 1, 0, schedule.size - 1)
    hi = np.clip(pos, 0, schedule.size - 1)
    pick = np.where(np.abs(schedule[lo] - intended_s) <= np.abs(schedule[hi] - intended_s), lo, hi)
    return np.where(np.abs(schedule[pick] - intended_s) <= MATCH_TOL_S, pick, -1).astype(np.int64)


def _check_agree(parts: list[Part], where: str) -> list[str]:
    first = parts[0]
    for p in parts[1:]:
        for key in (*SCHEDULE_KEYS, *REQUEST_KEYS):
            if p.spec.get(key) != first.spec.get(key):
                raise UserError(f"{where}: {p.label} has {key} = {p.spec.get(key)!r} but {first.label} has "
                                f"{first.spec.get(key)!r}: they are not parts of one schedule")
        if p.count != first.count:
            raise UserError(f"{where}: {p.label} is one of {p.count} parts but {first.label} one of {first.count}")
    seen: dict[int, Part] = {}
    for p in parts:
        if p.index in seen:
            raise UserError(f"{where}: part {p.index}/{p.count} is given twice: {seen[p.index].source} and {p.source}")
        seen[p.index] = p
    notes = []
    targets = sorted({str(p.spec.get("target")) for p in parts})
    if len(targets) > 1:
        notes.append(f"{where}: the parts sent to different addresses ({', '.join(targets)}), e.g. each its own "
                     "node's NodePort")
    starts = [float(p.summary["start_at_unix"]) for p in parts if p.summary.get("start_at_unix") is not None]
    if len(starts) > 1 and max(starts) - min(starts) > START_SKEW_S:
        notes.append(f"{where}: the parts started {max(starts) - min(starts):.2f} s apart (clocks or late pods): "
                     "the merged rate over time is not the one requested")
    return notes


def _check_rows(part: Part, schedule: FloatArray, where: str) -> npt.NDArray[np.int64]:
    idx = match_schedule(part.rows["intended_s"].to_numpy(dtype=np.float64), schedule)
    strays = int(((idx < 0) | (idx % part.count != part.index)).sum())
    if strays:
        raise UserError(f"{where}: {strays} rows of {part.label} are not its share of the schedule (another seed, "
                        "rate or --part?)")
    return idx


def merge_phase(parts: list[Part], partial: bool = False) -> MergedPhase:
    first = parts[0]
    where = f"{first.frontend} @ {first.rate_rps:g} rps #{first.repeat}"
    notes = _check_agree(parts, where)
    parts = sorted(parts, key=lambda p: p.index)
    missing = [i for i in range(first.count) if i not in {p.index for p in parts}]
    if missing and not partial:
        raise UserError(f"{where}: part(s) {', '.join(map(str, missing))} of {first.count} are missing "
                        "(give them, or --partial to merge what is there, marked incomplete)")
    if missing:
        notes.append(f"{where}: part(s) {', '.join(map(str, missing))} of {first.count} missing: incomplete")
    schedule = schedule_of(first.spec)
    if schedule is not None:
        matched = np.concatenate([_check_rows(p, schedule, where) for p in parts])
        if np.unique(matched).size != matched.size:
            raise UserError(f"{where}: some requests of the schedule appear in more than one row")
    frames = [p.rows.assign(part=np.int16(p.index)) for p in parts]
    rows = pd.concat(frames, ignore_index=True).sort_values("intended_s", kind="stable", ignore_index=True)
    latency = LogHistogram.merged(p.latency for p in parts)
    lateness = LogHistogram.merged(p.lateness for p in parts)
    return MergedPhase(first.frontend, first.rate_rps, first.repeat, tuple(parts), first.count, rows, latency,
                       lateness, None if schedule is None else int(schedule.size), tuple(notes))


def merge_parts(parts: list[Part], partial: bool = False,
                rate_order: Sequence[float] = ()) -> list[MergedPhase]:
    """Group parts into phases (front end, rate, repeat) and merge each, in `lbbench run`'s phase order."""
    groups: dict[tuple[str, float, int], list[Part]] = collections.defaultdict(list)
    for p in parts:
        groups[(p.frontend, p.rate_rps, p.repeat)].append(p)
    fe_order = list(dict.fromkeys(p.frontend for p in parts))

    def key(k: tuple[str, float, int]) -> tuple[int, float, int, int]:
        fe, rate, rep = k
        rank = next((i for i, r in enumerate(rate_order) if abs(r - rate) < 1e-9), len(rate_order))
        return rank, rate, fe_order.index(fe), rep

    return [merge_phase(groups[k], partial) for k in sorted(groups, key=key)]


# -- the generator's own section of each phase ------------------------------------------------------------------
def generator_section(ph: MergedPhase) -> dict[str, Any]:
    """The parts' generator summaries added up; latency and lateness from the merged histograms."""
    sums: dict[str, int] = {k: sum(int(p.summary.get(k) or 0) for p in ph.parts)
                            for k in ("requests", "completed", "ok", "failed", "aborted", "workers")}
    errors: collections.Counter[str] = collections.Counter()
    statuses: collections.Counter[str] = collections.Counter()
    for p in ph.parts:
        errors.update({str(k): int(v) for k, v in (p.summary.get("errors") or {}).items()})
        statuses.update({str(k): int(v) for k, v in (p.summary.get("statuses") or {}).items()})
    reasons = [f"part {p.index}: {p.summary['saturation_reason']}" for p in ph.parts
               if p.summary.get("generator_saturated")]
    return {
        **sums, "parts": len(ph.parts), "part_count": ph.count, "scheduled": ph.scheduled,
        "errors": dict(errors), "statuses": dict(sorted(statuses.items())),
        "latency_s": latency_stats(ph.latency), "lateness_s": short_stats(ph.lateness),
        "generator_saturated": bool(reasons), "saturation_reason": "; ".join(reasons) or None,
        "worker_cpu_s": [float(x) for p in ph.parts for x in p.summary.get("worker_cpu_s") or []],
        "stopped": any(bool(p.summary.get("stopped")) for p in ph.parts),
        "complete": ph.complete,
        "latency_histogram": ph.latency.to_dict(), "lateness_histogram": ph.lateness.to_dict(),
        "part_summaries": [{"index": p.index, "source": p.source, "target": p.spec.get("target"),
                            "requests": p.summary.get("requests"), "ok": p.summary.get("ok"),
                            "latency_s": p.summary.get("latency_s"), "complete": p.summary.get("complete")}
                           for p in ph.parts],
    }


# -- the results folder -------------------------------------------------------------------------------------
def read_events(paths: Sequence[Path]) -> pd.DataFrame:
    """faults.sh output (events.csv rows); rows without a front end apply to every phase."""
    frames = []
    for path in paths:
        try:
            df = pd.read_csv(path, keep_default_na=False, na_values=[])
        except (OSError, ValueError) as e:
            raise UserError(f"{path}: cannot read events: {e}") from None
        missing = [c for c in EVENT_COLUMNS if c not in df.columns]
        if missing:
            raise UserError(f"{path}: events need the columns {', '.join(EVENT_COLUMNS)}; missing {missing}")
        frames.append(df)
    cols = [*EVENT_COLUMNS, "frontend", "rate_rps", "repeat"]
    if not frames:
        return pd.DataFrame(columns=cols)
    df = pd.concat(frames, ignore_index=True)
    try:
        df["at_s"] = pd.to_numeric(df["at_s"], errors="raise")
    except ValueError as e:
        raise UserError(f"events: at_s must be seconds: {e}") from None
    return df


def phase_events(events: pd.DataFrame, ph: MergedPhase) -> pd.DataFrame:
    if not len(events):
        return pd.DataFrame(columns=list(EVENT_COLUMNS))
    mask = pd.Series(True, index=events.index)
    if "frontend" in events.columns:
        mask &= events["frontend"].astype(str).isin([ph.frontend, ""])
    if "rate_rps" in events.columns:
        rate = pd.to_numeric(events["rate_rps"], errors="coerce")
        mask &= rate.isna() | ((rate - ph.rate_rps).abs() < 1e-6)
    if "repeat" in events.columns:
        rep = pd.to_numeric(events["repeat"], errors="coerce")
        mask &= rep.isna() | (rep == ph.repeat)
    return events.loc[mask, list(EVENT_COLUMNS)].sort_values("at_s", kind="stable", ignore_index=True)


def _tag(df: pd.DataFrame, ph: MergedPhase) -> pd.DataFrame:
    return df.assign(frontend=ph.frontend, rate_rps=ph.rate_rps, repeat=ph.repeat)


def _theory(config: Config | None, frontend: str, rate_rps: float, latency: dict[str, Any]) -> dict[str, Any]:
    if config is None:
        return {"model": None, "reason": "merged without --config"}
    from lbbench.results.theory_fit import theory_section

    name = THEORY_NAME.get(frontend)
    if name is None:
        return {"model": None, "reason": f"{frontend}: the cluster's Ingress controller has no model here"}
    return theory_section(config, name, rate_rps, latency)


def phase_entry(ph: MergedPhase, events: pd.DataFrame, duration_s: float, config: Config | None) -> dict[str, Any]:
    gen = generator_section(ph)
    cpu = {"generator": round(sum(gen["worker_cpu_s"]), 3)}
    targets = sorted({str(p.spec.get("target")) for p in ph.parts})
    entry: dict[str, Any] = {"frontend": ph.frontend, "rate_rps": ph.rate_rps, "repeat": ph.repeat,
                             "target": ", ".join(targets), "complete": ph.complete, "error": None, "counters": {}}
    entry.update(frontend_summary(ph.rows, phase_events(events, ph), duration_s, cpu, gen,
                                  ran_s=_ran_s(ph, duration_s)))
    entry["generator"] = gen
    entry.update(NOT_MEASURED_HERE)
    entry["theory"] = _theory(config, ph.frontend, ph.rate_rps, entry["latency_s"])
    return entry


def _ran_s(ph: MergedPhase, duration_s: float) -> float:
    """A phase whose parts were stopped ran until its last part's last send."""
    stopped = any(bool(p.summary.get("stopped")) for p in ph.parts)
    actual = max(float(p.summary.get("actual_duration_s") or 0.0) for p in ph.parts)
    return load_ran_s(duration_s, stopped, actual)


def frontend_entry(name: str, mine: list[MergedPhase], events: pd.DataFrame, duration_s: float,
                   config: Config | None) -> dict[str, Any]:
    """One front end at the first rate, repeats merged from raw rows (as lbbench.run.collect does)."""
    per = [phase_entry(ph, events, duration_s, config) for ph in mine]
    rows = pd.concat([ph.rows for ph in mine], ignore_index=True)
    evs = pd.concat([phase_events(events, ph) for ph in mine], ignore_index=True)
    cpu = {"generator": sum(p["cpu_s"]["generator"] for p in per) / len(per)}
    gen = {"generator_saturated": any(p["generator_saturated"] for p in per),
           "saturation_reason": "; ".join(p["saturation_reason"] for p in per if p["saturation_reason"]) or None,
           "lateness_s": per[0]["lateness_s"]}
    entry = frontend_summary(rows, evs, duration_s * len(mine), cpu, gen, ran_s=sum(p["ran_s"] for p in per))
    merge_repeats(entry, per)
    entry["complete"] = all(ph.complete for ph in mine)
    entry.update(NOT_MEASURED_HERE)
    entry["theory"] = _theory(config, name, mine[0].rate_rps, entry["latency_s"])
    return entry


def _config_section(phases: list[MergedPhase], config: Config | None, name: str, duration_s: float) -> dict[str, Any]:
    from lbbench.results.theory_fit import judging, theory_inputs

    spec = phases[0].parts[0].spec
    return {
        "name": name, "duration_s": duration_s, "frontends": list(dict.fromkeys(ph.frontend for ph in phases)),
        "load": {"arrivals": spec.get("arrivals"), "connections": spec.get("connections"),
                 "service": config.load.service if config else None, "via": config.load.via if config else None},
        "repeat": max(ph.repeat for ph in phases) + 1, "cluster": "kubernetes",
        "endpoint_sync_delay_s": None,  # the cluster's own, not lbbench's
        "restart_delay_s": None,
        "theory_inputs": theory_inputs(config) if config is not None else None,
        "report": judging(config) if config is not None else None,
    }


def run_duration_s(phases: list[MergedPhase], config: Config | None) -> float:
    """The one duration all phases ran for (and the config's, if given)."""
    durations = sorted({float(ph.parts[0].spec["duration_s"]) for ph in phases})
    if len(durations) > 1:
        raise UserError(f"the phases ran for different durations ({', '.join(f'{d:g} s' for d in durations)}): "
                        "merge the parts of one experiment at a time")
    duration_s = durations[0]
    if config is not None and abs(config.run.duration_s - duration_s) > 1e-9:
        raise UserError(f"the parts ran for {duration_s:g} s but {config.path} says run.duration = "
                        f"{config.run.duration_s:g} s: not this config's parts")
    return duration_s


def merged_contents(phases: list[MergedPhase], events: pd.DataFrame, config: Config | None,
                    name: str) -> FolderContents:
    """The results folder of the merged phases, for lbbench.results.writer.write_folder."""
    duration_s = run_duration_s(phases, config)
    first_rate = phases[0].rate_rps
    names = list(dict.fromkeys(ph.frontend for ph in phases))
    frontends = {n: frontend_entry(n, mine, events, duration_s, config) for n in names
                 if (mine := [ph for ph in phases if ph.frontend == n and ph.rate_rps == first_rate])}
    seed = int(phases[0].parts[0].spec.get("seed", 0))
    summary = summary_document(
        complete=all(ph.complete for ph in phases),
        metadata=metadata(seed, {"merged_by": "lbbench merge", "cluster": "kubernetes",
                                 "metadata_is_of": "the machine that merged; the parts ran in the cluster",
                                 "parts": [p.source for ph in phases for p in ph.parts]}),
        config=_config_section(phases, config, name, duration_s),
        phases=[phase_entry(ph, events, duration_s, config) for ph in phases],
        frontends=frontends, skipped={}, notes=[n for ph in phases for n in ph.notes])
    return FolderContents(
        summary=summary,
        rows=pd.concat([_tag(ph.rows, ph) for ph in phases], ignore_index=True),
        events=pd.concat([_tag(phase_events(events, ph), ph) for ph in phases], ignore_index=True),
        timeseries=pd.concat([_tag(buckets(ph.rows, duration_s), ph) for ph in phases], ignore_index=True),
        config_file=Path(config.path) if config is not None else None)
