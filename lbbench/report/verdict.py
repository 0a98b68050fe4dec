"""The answer first: two to four sentences and the key table, from :mod:`lbbench.report.headline`.

Sentences are written from the numbers with their intervals; a difference is called a
difference only when the two 95% intervals do not overlap, and a figure too uncertain to carry
a claim says so, with the run length that would fix it (pyperf-style).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from lbbench.report.doc import Table
from lbbench.report.headline import ClientView
from lbbench.report.metrics import fmt_int, fmt_ms, fmt_s
from lbbench.results.uncertainty import CLAIM_REL, Interval


def fmt_ci(iv: Interval | None, value: float | None = None) -> str:
    """'92.1 [85.0, 101]' in ms; the bare value when there is no interval."""
    if iv is None:
        return fmt_ms(value)
    return f"{fmt_ms(iv.value)} [{fmt_ms(max(0.0, iv.lo))}, {fmt_ms(iv.hi)}]"


def fmt_pct(v: float | None) -> str:
    if v is None:
        return "–"
    return f"{v:.0f}%" if v in (0.0, 100.0) else f"{v:.3g}%" if v >= 1 else f"{v:.2g}%"


def failed_phrase(v: ClientView) -> str:
    if not v.error_count:
        return "no failed request"
    kinds = ", ".join(f"{k} {n:,}" for k, n in sorted(v.errors.items(), key=lambda kv: -kv[1]))
    return f"{v.error_count:,} of {v.requests:,} failed ({fmt_pct(v.errors_pct)}: {kinds})"


def _p99(v: ClientView) -> str:
    return fmt_ci(v.all_ci.get("p99"), v.all_latency.get("p99")) + " ms"


def _overlap(a: Interval, b: Interval) -> bool:
    return a.lo <= b.hi and b.lo <= a.hi


def difference_sentence(a: ClientView, b: ClientView) -> str | None:
    """'l7-proxy's p99 is lower than userspace-dnat's: 92 ms [85, 101] vs 149 ms [138, 163]'."""
    ia, ib = a.all_ci.get("p99"), b.all_ci.get("p99")
    if ia is None or ib is None:
        return None
    if _overlap(ia, ib):
        return (f"{a.frontend}'s and {b.frontend}'s p99 cannot be told apart at this run length: "
                f"{_p99(a)} vs {_p99(b)}.")
    word = "lower" if ia.value < ib.value else "higher"
    return f"{a.frontend}'s p99 is {word} than {b.frontend}'s: {_p99(a)} vs {_p99(b)}."


def verdict(views: Sequence[ClientView], duration_s: float) -> list[str]:
    """Two to four sentences: the best, who failed, the key difference with its intervals, a caveat."""
    if not views:
        return ["No front end measured anything."]
    best = views[0]
    slo_ms = fmt_ms(best.slo_s)
    out = [
        (f"{best.frontend} served the clients best" if len(views) > 1 else f"{best.frontend}")
        + f": {failed_phrase(best)}, {fmt_pct(best.slo_pct)} answered OK within the {slo_ms} ms SLO, "
        f"p99 {_p99(best)} counting failed requests."
    ]
    failing = [v for v in views if v.error_count]
    if len(views) > 1 and failing:
        listed = "; ".join(f"{v.frontend} {failed_phrase(v)}" for v in failing[:3])
        more = f" and {len(failing) - 3} more" if len(failing) > 3 else ""
        out.append(f"Failed requests: {listed}{more}.")
    elif len(views) > 1:
        out.append("No front end failed a request.")
    if len(views) > 1 and (diff := difference_sentence(best, views[1])) is not None:
        out.append(diff)
    if (caveat := uncertainty_sentence(views, duration_s)) is not None:
        out.append(caveat)
    return out[:4]


def uncertainty_sentence(views: Sequence[ClientView], duration_s: float) -> str | None:
    """One caveat for the widest p99 interval above CLAIM_REL, with the run length that would fix it."""
    worst: tuple[float, ClientView, Interval] | None = None
    for v in views:
        iv = v.all_ci.get("p99")
        if iv is not None and iv.rel_half_width > CLAIM_REL and (worst is None or iv.rel_half_width > worst[0]):
            worst = (iv.rel_half_width, v, iv)
    missing = [v.frontend for v in views if v.requests and v.all_ci.get("p99") is None]
    if worst is not None:
        rel, v, iv = worst
        longer = iv.longer_run_factor()
        return (f"{v.frontend}'s p99 is only good to ±{rel:.0%}, too uncertain to carry a fine claim: a run "
                f"about {longer:.0f}x longer ({duration_s * longer:,.0f} s per phase) would bring it to "
                f"±{CLAIM_REL:.0%}.")
    if missing:
        return f"Too few requests for a p99 interval ({', '.join(missing)}): run longer."
    return None


def too_uncertain(views: Sequence[ClientView], duration_s: float) -> list[str]:
    """pyperf-style warnings: every headline figure whose 95% interval is wider than ±CLAIM_REL."""
    out = []
    for v in views:
        for stat, label in (("mean", "mean"), ("p50", "p50"), ("p99", "p99"), ("p999", "p99.9")):
            iv = v.all_ci.get(stat)
            if iv is not None and iv.rel_half_width > CLAIM_REL:
                longer = iv.longer_run_factor()
                out.append(f"{v.frontend} {label} {fmt_ci(iv)} ms is ±{iv.rel_half_width:.0%}: run about "
                           f"{longer:.0f}x longer ({duration_s * longer:,.0f} s per phase) for ±{CLAIM_REL:.0%}.")
    return out


def headline_table(views: Sequence[ClientView], slo_source: str, rate: str = "") -> Table:
    """The key table: one row per front end, best first."""
    slo_ms = fmt_ms(views[0].slo_s) if views else "–"
    rows = tuple(
        (
            str(i),
            v.frontend,
            failed_phrase(v) if v.error_count else "0",
            fmt_pct(v.slo_pct),
            fmt_ci(v.all_ci.get("p50"), v.all_latency.get("p50")),
            fmt_ci(v.all_ci.get("p99"), v.all_latency.get("p99")),
            fmt_ci(v.all_ci.get("p999"), v.all_latency.get("p999")),
            fmt_ci(v.ok_ci.get("p99"), v.ok_latency.get("p99")),
            fmt_int(v.lost),
            "never" if v.recovery_s is not None and v.recovery_s == float("inf") else fmt_s(v.recovery_s),
        )
        for i, v in enumerate(views, 1)
    )
    return Table(
        ("#", "front end", "failed", f"OK within {slo_ms} ms SLO", "p50 (ms)", "p99 (ms)", "p99.9 (ms)",
         "p99 of 2xx only (ms)", "lost in events", "recovery (s)"),
        rows,
        align=("r", "l", "l", "r", "r", "r", "r", "r", "r", "r"),
        caption=f"Ranked on failed requests, then the share of all requests answered OK within the SLO "
        f"({slo_source}), then p99.{rate} Latencies count every request, a failed one at the time the "
        "client gave up, from the intended send time; [95% interval by batch means]. The 2xx-only p99 "
        "leaves failures out and can flatter a front end that drops requests.",
    )


def sweep_verdict(by_rate: Mapping[float, Sequence[ClientView]], theory: Sequence[tuple[str, str]]) -> list[str]:
    """A sweep's answer across its rates: who was best where, where failures began, how theory fared.

    `theory`: (front end, verdict) of every steady-state row ('pass', 'FAIL', 'not compared', '–').
    """
    rates = [r for r, views in by_rate.items() if views]
    if not rates:
        return ["No front end measured anything."]
    best = [by_rate[r][0].frontend for r in rates]
    winner = max(set(best), key=best.count)
    where = "at every rate" if best.count(winner) == len(rates) else f"at {best.count(winner)} of {len(rates)} rates"
    out = [f"Across {len(rates)} rates ({rates[0]:g}-{rates[-1]:g} rps), {winner} served the clients best {where} "
           "(ranked on failed requests, then OK within the SLO, then p99 counting failures)."]
    failing = [(r, v) for r in rates for v in by_rate[r] if v.error_count]
    if failing:
        first_rate, first = failing[0]
        out.append(f"Failures begin at {first_rate:g} rps ({first.frontend} {failed_phrase(first)}).")
    else:
        out.append("No front end failed a request at any rate.")
    judged = [v for _, v in theory if v in ("pass", "FAIL")]
    if judged:
        out.append(f"Theory: {judged.count('pass')} of {len(judged)} steady-state rows within tolerance.")
    return out
