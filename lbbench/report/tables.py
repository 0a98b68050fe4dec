"""The report's tables, as plain :class:`Table` data (rendered by markdown.py and html.py)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from lbbench.report.analysis import QueueStats, fmt_opt
from lbbench.report.doc import Table
from lbbench.report.loader import FrontendStats, PhaseStats, Results
from lbbench.report.metrics import fmt_int, fmt_ms, fmt_rps, fmt_s, frontend_metrics, lost

# Setup rows: (label, how to get the value from the results); metadata keys not listed are appended.
SHOWN_META = (
    "config_file",
    "started_utc",
    "seed",
    "hostname",
    "machine",
    "cpu_count",
    "kernel",
    "lbbench_version",
    "implementation",
    "python",
    "in_netns",
    "frontends_requested",
)


def _rates(r: Results) -> str:
    return ", ".join(f"{x:g}" for x in r.rates) + " rps" if r.rates else "–"


def _load(r: Results) -> str:
    load = r.config.get("load") or {}
    via = load.get("via", "?")
    paths = f"each of {', '.join(map(str, via))} (L7 front ends: their Ingress)" if isinstance(via, list) else via
    parts = [
        f"{load.get('arrivals', '?')} arrivals",
        f"connections {load.get('connections', '?')}",
        f"to {load.get('service', '?')} via {paths}",
    ]
    return ", ".join(parts)


SETUP: tuple[tuple[str, Callable[[Results], Any]], ...] = (
    ("config", lambda r: r.name),
    ("config file", lambda r: r.metadata.get("config_file", "–")),
    ("started (UTC)", lambda r: r.metadata.get("started_utc", "–")),
    ("complete", lambda r: "yes" if r.complete else "NO: cut short"),
    ("duration per phase", lambda r: f"{r.duration_s:g} s"),
    ("load", _load),
    ("rate", _rates),
    ("repeats per phase", lambda r: r.config.get("repeat", 1)),
    ("seed", lambda r: r.metadata.get("seed", "–")),
    ("front ends", lambda r: ", ".join(r.config.get("frontends") or r.frontend_names)),
    (
        "endpoint sync delay",
        lambda r: f"{r.config['endpoint_sync_delay_s']:g} s" if "endpoint_sync_delay_s" in r.config else "–",
    ),
    (
        "pod restart delay",
        lambda r: f"{r.config['restart_delay_s']:g} s" if "restart_delay_s" in r.config else "–",
    ),
    (
        "machine",
        lambda r: " ".join(str(r.metadata.get(k, "")) for k in ("hostname", "machine")).strip() or "–",
    ),
    ("CPUs", lambda r: r.metadata.get("cpu_count", "–")),
    ("kernel", lambda r: r.metadata.get("kernel", "–")),
    (
        "versions",
        lambda r: (
            f"lbbench {r.metadata.get('lbbench_version', '?')}, "
            f"{r.metadata.get('implementation', 'Python')} {r.metadata.get('python', '?')}"
        ),
    ),
    ("private network namespace", lambda r: "yes" if r.metadata.get("in_netns") else "no"),
)


def setup_table(r: Results) -> Table:
    rows = [(label, str(get(r))) for label, get in SETUP]
    rows += [(k, _plain(v)) for k, v in r.metadata.items() if k not in SHOWN_META]
    return Table(("setting", "value"), tuple(rows), align=("l", "l"))


def _plain(v: Any) -> str:
    if isinstance(v, list | tuple):
        return ", ".join(str(x) for x in v)
    return str(v)


def frontend_table(r: Results, fes: Sequence[FrontendStats] | None = None) -> Table:
    """The side-by-side table: one column per front end, one row per metric."""
    fes = list(r.frontends if fes is None else fes)
    rows = tuple((m.label, *(m.fmt(m.get(f)) for f in fes)) for m in frontend_metrics(fes))
    rate = f" at {r.first_rate:g} rps" if r.first_rate is not None else ""
    reps = max((f.repeats for f in fes), default=1)
    caption = (
        f"Per front end{rate}"
        + (f", {reps} repeats merged (percentiles from the raw rows)" if reps > 1 else "")
        + ". Latency: successful (2xx) requests, from the intended send time. Lost, error window and "
        "recovery: over the timeline's events (sum of lost; the longest window and recovery). "
        "CPU: seconds used by each part during the phase."
    )
    return Table(("", *(f.name for f in fes)), rows, caption=caption)


def _repeat_of(f: FrontendStats, i: int) -> int:
    """summary.json lists the failover entries of all repeats in order, the same timeline each time."""
    per_repeat = max(1, len(f.failover) // max(1, f.repeats))
    return i // per_repeat


def failover_table(r: Results) -> Table | None:
    repeats = max((f.repeats for f in r.frontends), default=1) > 1
    rows = []
    for f in r.frontends:
        for i, e in enumerate(f.failover):
            rep = (f"#{_repeat_of(f, i)}",) if repeats else ()
            recovery = "never" if e.recovery_s is None else fmt_s(e.recovery_s)
            rows.append(
                (
                    f.name,
                    *rep,
                    e.event,
                    f"{e.at_s:.2f}",
                    fmt_int(float(e.lost)),
                    fmt_s(e.error_window_s),
                    recovery,
                    fmt_ms(e.pre_event_p99_s),
                )
            )
    if not rows:
        return None
    headers = (
        "front end",
        *(("repeat",) if repeats else ()),
        "event",
        "at (s)",
        "lost",
        "error window (s)",
        "recovery (s)",
        "p99 before (ms)",
    )
    return Table(
        headers,
        tuple(rows),
        align=("l", *(("r",) if repeats else ()), "l", "r", "r", "r", "r", "r"),
        caption="recovery 'never': not error-free with p99 within 2x the pre-event p99 before the run ended.",
    )


def queue_table(stats: Sequence[QueueStats]) -> Table | None:
    if not any(s.n or s.proxy_queue_max is not None for s in stats):
        return None
    rows = tuple(
        (
            s.frontend,
            fmt_opt(s.proxy_queue_mean, ".2f"),
            fmt_opt(s.proxy_queue_max, ".0f"),
            fmt_opt(s.pod_wait_mean_ms),
            fmt_opt(s.pod_wait_p99_ms),
            fmt_opt(s.service_mean_ms),
            fmt_opt(s.outside_mean_ms),
            fmt_opt(s.outside_p99_ms),
            s.queue_at or "–",
        )
        for s in stats
    )
    return Table(
        (
            "front end",
            "proxy queue mean",
            "proxy queue max",
            "pod wait mean (ms)",
            "pod wait p99 (ms)",
            "service mean (ms)",
            "outside pod mean (ms)",
            "outside pod p99 (ms)",
            "waited most at",
        ),
        rows,
        align=("l", "r", "r", "r", "r", "r", "r", "r", "l"),
        caption="Successful requests. Proxy queue: the front end's own queue length, sampled every 100 ms. "
        "Pod wait/service: reported by the pod (x-queue-ms, x-service-ms). Outside pod: latency "
        "minus both (client, front end and its queue, network).",
    )


def skipped_table(r: Results) -> Table | None:
    if not r.skipped:
        return None
    return Table(("front end", "why it was skipped"), tuple(r.skipped.items()), align=("l", "l"))


def _phase_status(p: PhaseStats) -> str:
    if p.error:
        return f"failed: {p.error}"
    return "complete" if p.complete else "cut short"


def phases_table(r: Results) -> Table:
    rows = []
    for p in r.phases:
        s = p.stats
        nums = (
            ("–",) * 7
            if s is None
            else (
                fmt_int(float(s.requests)),
                fmt_int(float(s.ok)),
                fmt_int(float(s.error_count)),
                fmt_rps(s.achieved_rps),
                fmt_ms(s.latency_s.get("p50")),
                fmt_ms(s.latency_s.get("p99")),
                fmt_int(lost(s)),
            )
        )
        rows.append((p.frontend, f"{p.rate_rps:g}", str(p.repeat), *nums, _phase_status(p)))
    return Table(
        (
            "front end",
            "rate (rps)",
            "repeat",
            "requests",
            "ok",
            "errors",
            "achieved rps",
            "p50 (ms)",
            "p99 (ms)",
            "lost",
            "status",
        ),
        tuple(rows),
        align=("l", "r", "r", "r", "r", "r", "r", "r", "r", "r", "l"),
    )


def needs_phases_table(r: Results) -> bool:
    per_fe = len(r.phases) > len({p.frontend for p in r.phases})
    return per_fe or any(p.error or not p.complete for p in r.phases)


def spread_table(r: Results) -> Table | None:
    fes = [f for f in r.frontends if f.spread]
    if not fes:
        return None
    keys = (
        ("achieved_rps", "achieved rps", fmt_rps),
        ("p99_s", "p99 (ms)", fmt_ms),
        ("lost", "lost", fmt_rps),
    )
    rows = []
    for label_key, label, fmt in keys:
        cells = []
        for f in fes:
            s = f.spread.get(label_key) or {}
            cells.append(
                "–"
                if s.get("mean") is None
                else f"{fmt(s['mean'])} ± {fmt(s.get('stdev'))} ({fmt(s.get('min'))}–{fmt(s.get('max'))})"
            )
        rows.append((label, *cells))
    return Table(
        ("across repeats", *(f.name for f in fes)),
        tuple(rows),
        caption="mean ± standard deviation (min–max) over the repeats of each phase.",
    )
