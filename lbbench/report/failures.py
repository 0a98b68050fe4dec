"""Per event and front end: what each failure cost the clients (issue 14), from the results files only.

For every `[[events]]` entry that fired, in each front end's phase: the errors by kind in the
event's window (until the next event or the end of the load), the time to detect, the error
window (first to last failed request) and the recovery (event to the last failure's end), with
the p99 before and during the window.

Detection is the earlier of two moments: the first Endpoints sync after the event (what every
front end gets from the cluster), and the front end's own health check marking a backend down
(`backend_down` in events.csv: l7-proxy and HAProxy report theirs; nginx has no active checks
in open source and httpd's are not read, so they are judged by the Endpoints sync alone). It is
timed from the first failed request, or from the event when no request failed before it.
"In short" says which front end hid the failure from its clients and at what latency cost.
Network-fault events that could not be played (no namespace) are listed with the reason.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from lbbench.report.doc import Block, Bullets, Paragraph, Section, Table
from lbbench.report.loader import Results
from lbbench.report.metrics import fmt_ms, fmt_s

KINDS = ("connect_timeout", "timeout", "unreachable", "refused", "reset", "http_5xx")
BY = {"endpoints_synced": "Endpoints sync", "backend_down": "health check"}


@dataclass(frozen=True)
class EventCost:
    frontend: str
    event: str  # "node_down node/node-1"
    at_s: float  # when it fired in this front end's phase (the timer's lateness differs a little)
    requests: int
    errors: dict[str, int]
    detect_s: float | None
    detected_by: str | None  # "Endpoints sync" or "health check"
    window_s: float | None
    recovery_s: float | None
    p99_before_s: float | None
    p99_during_s: float | None

    @property
    def failed(self) -> int:
        return sum(self.errors.values())


def _p99(latency: pd.Series) -> float | None:
    return float(latency.quantile(0.99)) if len(latency) else None


def event_costs(r: Results) -> list[EventCost]:
    ev, rows = r.events, r.requests
    if ev.empty or rows.empty or "frontend" not in ev.columns or "error" not in rows.columns:
        return []
    out = []
    for fe, mine in ev.groupby("frontend", sort=False):
        fired = mine[mine["kind"] == "event"].sort_values("at_s")
        reqs = rows[rows["frontend"] == fe]
        ends = [*fired["at_s"].iloc[1:].astype(float), math.inf][:len(fired)]
        for (_, e), end in zip(fired.iterrows(), ends, strict=True):
            out.append(_cost(str(fe), e, end, mine, reqs))
    return out


def _cost(fe: str, e: pd.Series, end: float, events: pd.DataFrame, reqs: pd.DataFrame) -> EventCost:
    at = float(e["at_s"])
    window = reqs[(reqs["intended_s"] >= at) & (reqs["intended_s"] < end)]
    before = reqs[(reqs["intended_s"] < at) & (reqs["intended_s"] >= at - 5.0)]
    failed = window[window["error"].astype(str) != ""]
    errors = {str(k): int(v) for k, v in failed["error"].value_counts().items()}
    first = float(failed["intended_s"].min()) if len(failed) else None
    detected = _detection(events, at, end)
    detect = by = None
    if detected is not None:
        by = BY[str(detected["kind"])]
        start = first if first is not None and first <= float(detected["at_s"]) else at
        detect = float(detected["at_s"]) - start
    window_s = float(failed["intended_s"].max()) - first if first is not None else None
    # latency counts from the intended send time, so intended + latency is when the client gave up
    recovery = float((failed["intended_s"] + failed["latency_s"]).max()) - at if first is not None else None
    return EventCost(fe, f"{e['detail']} {e['target']}", at, len(window), errors, detect, by, window_s, recovery,
                     _p99(before["latency_s"]), _p99(window["latency_s"]))


def _detection(events: pd.DataFrame, at: float, end: float) -> pd.Series | None:
    """The first sign after the event that the front end knew: an Endpoints sync or its own check's verdict."""
    seen = events[events["kind"].isin(tuple(BY)) & (events["at_s"] > at) & (events["at_s"] < end)]
    return None if seen.empty else seen.sort_values("at_s", kind="stable").iloc[0]


def _kinds(c: EventCost) -> str:
    if not c.failed:
        return "0"
    named = [f"{k} {c.errors[k]}" for k in KINDS if c.errors.get(k)]
    other = c.failed - sum(c.errors.get(k, 0) for k in KINDS)
    return ", ".join(named + ([f"other {other}"] if other else []))


def failures_table(costs: list[EventCost]) -> Table:
    rows = tuple((c.event, f"{c.at_s:.2f}", c.frontend, f"{c.requests}", f"{c.failed}", _kinds(c),
                  fmt_s(c.detect_s), c.detected_by or "", fmt_s(c.window_s), fmt_s(c.recovery_s),
                  fmt_ms(c.p99_before_s), fmt_ms(c.p99_during_s)) for c in costs)
    return Table(("event", "at (s)", "front end", "requests", "failed", "errors by kind", "detect (s)", "detected by",
                  "error window (s)", "recovery (s)", "p99 before (ms)", "p99 during (ms)"), rows,
                 align=("l", "r", "l", "r", "r", "l", "r", "l", "r", "r", "r", "r"),
                 caption="Per event: requests intended from the event to the next one (or the end). detect: from the "
                 "first failed request (or the event, when none failed before) to the first Endpoints sync after the "
                 "event or, if earlier, the front end's own health check marking a backend down (l7-proxy and "
                 "haproxy report theirs; nginx has no active checks in open source and httpd's are not read: "
                 "Endpoints sync only); recovery: the event to the end of the last failed request; p99 before: the "
                 "5 s before the event.")


def in_short(costs: list[EventCost]) -> str:
    by_event: dict[tuple[str, int], list[EventCost]] = {}
    seen: dict[tuple[str, str], int] = {}
    for c in costs:  # the k-th firing of an event in each front end's phase is the same timeline entry
        k = seen[(c.frontend, c.event)] = seen.get((c.frontend, c.event), -1) + 1
        by_event.setdefault((c.event, k), []).append(c)
    parts = []
    for (event, _), cs in by_event.items():
        at = min(c.at_s for c in cs)
        hid = [c for c in cs if c.failed == 0]
        lost = sorted((c for c in cs if c.failed), key=lambda c: -c.failed)
        text = f"{event} at {at:.1f} s: "
        if hid:
            text += "hidden from clients by " + ", ".join(
                f"{c.frontend} (p99 {fmt_ms(c.p99_during_s)} ms during vs {fmt_ms(c.p99_before_s)} ms before)"
                for c in hid)
        if lost:
            text += ("; " if hid else "") + "seen by clients through " + ", ".join(
                f"{c.frontend} ({c.failed} failed: {_kinds(c)})" for c in lost)
        parts.append(text + ".")
    return "In short: " + " ".join(parts)


def skipped_events(r: Results) -> list[str]:
    ev = r.events
    if ev.empty or "kind" not in ev.columns:
        return []
    skipped = ev[ev["kind"] == "network_fault_skipped"]
    return sorted({f"{row.target}: not played ({row.detail})" for row in skipped.itertuples()})


def failure_sections(r: Results) -> list[Section]:
    """The section, when the run had a failure timeline."""
    costs = event_costs(r)
    notes = skipped_events(r)
    if not costs and not notes:
        return []
    blocks: list[Block] = []
    if costs:
        blocks += [Paragraph(in_short(costs)), failures_table(costs)]
    if notes:
        blocks.append(Bullets(tuple(notes)))
    return [Section("Failures, per event and front end", tuple(blocks), folded=True)]
