"""Assemble the report's :class:`Document` from the results, the plots and the derived numbers."""

from __future__ import annotations

from lbbench.report.analysis import queue_stats
from lbbench.report.doc import Banner, Block, Bullets, Document, Image, Paragraph, Section, Table
from lbbench.report.loader import Results
from lbbench.report.narrative import answers
from lbbench.report.plotkit import PlotSet
from lbbench.report.tables import (
    failover_table,
    frontend_table,
    needs_phases_table,
    phases_table,
    queue_table,
    setup_table,
    skipped_table,
    spread_table,
)
from lbbench.report.theory import theory_blocks
from lbbench.system.hoststat import STEAL_WARN

CUT_SHORT = (
    "This run was cut short (complete: false): it was interrupted or a phase failed. "
    "Everything measured until then is shown, but phases may be missing or shorter than configured."
)


def banners(r: Results) -> tuple[Banner, ...]:
    out = [] if r.complete else [Banner(CUT_SHORT)]
    out += [
        Banner(f"Phase {p.frontend} @ {p.rate_rps:g} rps #{p.repeat} failed: {p.error}")
        for p in r.phases
        if p.error
    ]
    several = any(p.repeat > 0 for p in r.phases)
    for p in r.phases:
        if p.stats is None:
            continue
        label = f"{p.frontend} @ {p.rate_rps:g} rps" + (f" #{p.repeat}" if several else "")
        if p.stats.generator_saturated:
            out.append(Banner(
                f"The load generator was saturated during {label}: {p.stats.saturation_reason or '?'}; "
                "its latencies may be the generator's, not the front end's."))
        worst = p.stats.host_cpu.get("steal_max_1s", 0.0)
        if worst >= STEAL_WARN:
            out.append(Banner(
                f"The hypervisor stole {worst:.0%} of this machine's CPU in the worst second of {label} "
                f"({p.stats.host_cpu.get('steal_fraction', 0.0):.1%} on average): while it does, every process "
                "stalls at once, so latencies from that second are the host's, not the front end's."))
    out += [Banner(f"Results folder: {note}.") for note in r.notes]
    return tuple(out)


def _optional(title: str, *blocks: Block | None) -> list[Section]:
    present: tuple[Block, ...] = tuple(b for b in blocks if b is not None)
    return [Section(title, present)] if any(isinstance(b, Table) for b in present) else []


def build_document(r: Results, plots: PlotSet) -> Document:
    queues = [queue_stats(r, name) for name in (f.name for f in r.frontends)]
    sections = (
        [Section("In short", (Bullets(tuple(answers(r, queues))),))] if r.frontends or r.skipped else []
    )
    sections.append(Section("Setup", (setup_table(r),)))
    if r.frontends:
        table_blocks: list[Block] = [frontend_table(r)]
        table_blocks += [t for t in (spread_table(r), failover_table(r)) if t is not None]
        sections.append(Section("Front ends side by side", tuple(table_blocks)))
    else:
        sections.append(Section("Front ends side by side", (Paragraph("No front end measured anything."),)))
    sections += _optional("Where requests waited", queue_table(queues))
    sections += _optional("Measured against theory", *theory_blocks(r))
    if needs_phases_table(r):
        sections.append(Section("Phases", (phases_table(r),)))
    sections += _optional("Skipped front ends", skipped_table(r))
    figures: list[Block] = [Image(p.path, p.title, p.caption) for p in plots.plots]
    if plots.notes:
        figures.append(Bullets(plots.notes))
    if figures:
        sections.append(Section("Plots", tuple(figures)))
    started = r.metadata.get("started_utc", "")
    subtitle = (
        f"{len(r.frontend_names)} front end(s), {r.duration_s:g} s per phase, seed "
        f"{r.metadata.get('seed', '?')}"
        + (f", started {started}" if started else "")
        + f". Results folder: {r.folder.name}"
    )
    return Document(f"lbbench report: {r.name}", subtitle, banners(r), tuple(sections))
