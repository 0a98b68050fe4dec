"""Assemble the report's :class:`Document`: the answer first, everything else folded.

Order: the verdict (two to four sentences), the headline figure and the key table (a sweep: its
curves against rate and utilisation and a per-rate table instead), checks, the steady-state
theory rows; then folded sections (setup, every metric, queues, theory details, plots).
Banners only for what can change a conclusion: a cut-short run, a failed phase, generator
lateness that is large against the latencies measured, CPU steal, an overload.
"""

from __future__ import annotations

from collections.abc import Sequence

from lbbench.report.analysis import queue_stats
from lbbench.report.checks import CheckResult
from lbbench.report.doc import Banner, Block, Bullets, Document, Image, Paragraph, Section, Table
from lbbench.report.failures import failure_sections
from lbbench.report.headline import ClientView, per_rate, slo
from lbbench.report.loader import Results
from lbbench.report.metrics import fmt_ms
from lbbench.report.narrative import answers
from lbbench.report.plotkit import Plot, PlotSet
from lbbench.report.scale import scale_sections
from lbbench.report.steady import steady_rows, tolerance
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
from lbbench.report.theory_table import steady_table
from lbbench.report.verdict import fmt_ci, fmt_pct, headline_table, sweep_verdict, too_uncertain, verdict
from lbbench.system.hoststat import STEAL_WARN

CUT_SHORT = (
    "This run was cut short (complete: false): it was interrupted or a phase failed. "
    "Everything measured until then is shown, but phases may be missing or shorter than configured."
)
LATENESS_SHARE = 0.05  # send lateness p99 above 5% of the p50 latency can move the measured percentiles
LEAD_PLOTS = ("theory_mean_vs_utilisation", "theory_p99_vs_utilisation", "latency_vs_rate")


def _lateness_p99(r: Results, i: int) -> float | None:
    raw = (r.summary.get("phases") or [{}] * (i + 1))[i] if i < len(r.summary.get("phases") or []) else {}
    v = (raw.get("lateness_s") or {}).get("p99") if isinstance(raw, dict) else None
    return float(v) if isinstance(v, int | float) else None


def banners(r: Results) -> tuple[Banner, ...]:
    out = [] if r.complete else [Banner(CUT_SHORT)]
    out += [Banner(f"Phase {p.frontend} @ {p.rate_rps:g} rps #{p.repeat} failed: {p.error}") for p in r.phases
            if p.error]
    several = any(p.repeat > 0 for p in r.phases)
    late_phases = []
    for i, p in enumerate(r.phases):
        if p.stats is None:
            continue
        label = f"{p.frontend} @ {p.rate_rps:g} rps" + (f" #{p.repeat}" if several else "")
        late, p50 = _lateness_p99(r, i), p.stats.latency_s.get("p50")
        if late is not None and p50 and late > LATENESS_SHARE * p50:
            late_phases.append(f"{label} {fmt_ms(late)} ms ({late / p50:.0%} of its p50 latency)")
        worst = p.stats.host_cpu.get("steal_max_1s", 0.0)
        if worst >= STEAL_WARN:
            out.append(Banner(
                f"The hypervisor stole {worst:.0%} of this machine's CPU in the worst second of {label} "
                f"({p.stats.host_cpu.get('steal_fraction', 0.0):.1%} on average): latencies from that "
                "second are the host's, not the front end's."))
    if late_phases:
        out.append(Banner("The load generator sent late (p99 send lateness): " + "; ".join(late_phases)
                          + ". Latencies are measured from the intended send time, so they include that delay."))
    out += overload_banners(r)
    out += [Banner(f"Results folder: {note}.") for note in r.notes]
    return tuple(out)


def overload_banners(r: Results) -> list[Banner]:
    rhos = sorted({round(float(t["utilisation"]), 3) for p in r.phases if p.stats for t in p.stats.theory
                   if isinstance(t.get("utilisation"), int | float) and t["utilisation"] >= 1})
    if not rhos:
        return []
    return [Banner(f"Overload: utilisation {', '.join(f'{x:g}' for x in rhos)} >= 1. The pods cannot keep up, "
                   "queues grow for as long as the run lasts, so latencies depend on the run length and no "
                   "queueing model applies (theory is not compared).")]


def _series_noun(r: Results) -> str:
    """A `via` sweep names a front end once per access path: count those pairs, not front ends."""
    return "front end/access path pairs" if isinstance((r.config.get("load") or {}).get("via"), list) \
        else "front end(s)"


def _optional(title: str, *blocks: Block | None, folded: bool = True) -> list[Section]:
    present: tuple[Block, ...] = tuple(b for b in blocks if b is not None)
    return [Section(title, present, folded)] if any(isinstance(b, Table) for b in present) else []


def _image(p: Plot) -> Image:
    return Image(p.path, p.title, p.caption)


def checks_table(results: Sequence[CheckResult]) -> Table:
    rows = tuple((c.check, c.frontend, c.detail, "pass" if c.passed else "FAIL") for c in results)
    failed = sum(not c.passed for c in results)
    return Table(("check", "front end", "measured", "result"), rows, align=("l", "l", "l", "l"),
                 caption=f"{len(results) - failed} of {len(results)} passed"
                 + (f"; {failed} failed: lbbench exits 3" if failed else "") + ".")


def rate_table(r: Results) -> Table:
    """A sweep's headline figures: one row per rate and front end."""
    rows_by_rate = per_rate(r)
    steady = {(s.frontend, s.rate_rps): s for s in steady_rows(r)[0]}
    tol = tolerance(r)
    rows = []
    for rate, views in rows_by_rate.items():
        for v in views:
            s = steady.get((v.frontend, rate))
            theory = "–" if s is None else (s.verdict(tol) if tol is not None else _err(s.rel_error("mean")))
            rows.append((f"{rate:g}", v.frontend, fmt_pct(v.errors_pct), fmt_pct(v.slo_pct),
                         fmt_ci(v.all_ci.get("p50"), v.all_latency.get("p50")),
                         fmt_ci(v.all_ci.get("p99"), v.all_latency.get("p99")), theory))
    return Table(("rate (rps)", "front end", "failed", "OK within SLO", "p50 (ms)", "p99 (ms)",
                  "theory" if tol is not None else "mean vs theory"), tuple(rows),
                 align=("r", "l", "r", "r", "r", "r", "l"),
                 caption="Per rate, best first. Latencies count every request [95% interval, batch means]; "
                 "theory: the steady-state mean against its model (see below).")


def _err(e: float | None) -> str:
    return "–" if e is None else f"{e:+.1%}"


def _lead(r: Results, views: Sequence[ClientView], plots: PlotSet, headline: Plot | None) -> list[Block]:
    if len(r.rates) > 1:
        curves = [_image(p) for p in plots.plots if p.name in LEAD_PLOTS]
        return [*curves, rate_table(r)]
    source = slo(r)[1]
    rate = f" Rate {r.first_rate:g} rps." if r.first_rate is not None else ""
    out: list[Block] = [_image(headline)] if headline is not None else []
    return out + ([headline_table(views, source, rate)] if views else [])


def build_document(r: Results, plots: PlotSet, views: Sequence[ClientView] = (), headline: Plot | None = None,
                   checks: Sequence[CheckResult] = ()) -> Document:
    rows, reasons = steady_rows(r)
    if len(r.rates) > 1:
        tol = tolerance(r)
        answer = sweep_verdict(per_rate(r), [(s.frontend, s.verdict(tol)) for s in rows])
    else:
        answer = verdict(views, r.duration_s)
    sections = [Section("Verdict", (Paragraph(" ".join(answer), verdict=True), *_lead(r, views, plots, headline)))]
    sections += scale_sections(r)  # a Service-count sweep's own section, when the run was one
    if checks:
        sections.append(Section("Checks", (checks_table(checks),)))
    if rows or reasons:
        table, details = steady_table(r, rows, reasons)
        sections.append(Section("Measured against theory (steady state)", tuple(b for b in (table, details) if b)))
    if warnings := too_uncertain(views, r.duration_s):
        sections.append(Section("Too uncertain to carry a claim", (Bullets(tuple(warnings)),), folded=True))
    queues = [queue_stats(r, name) for name in (f.name for f in r.frontends)]
    if r.frontends or r.skipped:
        sections.append(Section("More findings", (Bullets(tuple(answers(r, queues))),), folded=True))
    if r.frontends:
        blocks: list[Block] = [frontend_table(r)]
        blocks += [t for t in (spread_table(r), failover_table(r)) if t is not None]
        sections.append(Section("Every metric, side by side", tuple(blocks), folded=True))
    sections += failure_sections(r)  # per event: errors by kind, detection, window, recovery
    sections += _optional("Where requests waited", queue_table(queues))
    sections += _optional("Theory details (every model variant)", *theory_blocks(r))
    if needs_phases_table(r):
        sections.append(Section("Phases", (phases_table(r),), folded=True))
    sections += _optional("Skipped front ends", skipped_table(r))
    lead_names = set(LEAD_PLOTS) if len(r.rates) > 1 else set()
    figures: list[Block] = [_image(p) for p in plots.plots if p.name not in lead_names]
    if plots.notes:
        figures.append(Bullets(plots.notes))
    if figures:
        sections.append(Section("Plots", tuple(figures), folded=True))
    sections.append(Section("Setup", (setup_table(r),), folded=True))
    started = r.metadata.get("started_utc", "")
    subtitle = (
        f"{len(r.frontend_names)} {_series_noun(r)}, {r.duration_s:g} s per phase, seed {r.metadata.get('seed', '?')}"
        + (f", started {started}" if started else "") + f". Results folder: {r.folder.name}"
    )
    return Document(f"lbbench report: {r.name}", subtitle, banners(r), tuple(sections))
