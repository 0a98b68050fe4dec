"""Short answers to the notes' questions, written from the numbers (never from expectations).

Which front end lost what during failover; where the queue was; whose tail was longer; how evenly
the pods were loaded; and the caveats that make a number less trustworthy.
"""

from __future__ import annotations

from collections.abc import Sequence

from lbbench.report.analysis import QueueStats
from lbbench.report.loader import FailoverStats, FrontendStats, Results
from lbbench.report.metrics import fmt_ms


def answers(r: Results, queues: Sequence[QueueStats]) -> list[str]:
    out: list[str] = []
    if not r.complete:
        out.append("The run was cut short: the numbers cover only what was measured before it stopped.")
    out += failover_sentences(r.frontends)
    if (tail := tail_sentence(r.frontends)) is not None:
        out.append(tail)
    if (errs := error_sentence(r.frontends)) is not None:
        out.append(errs)
    out += [s for q in queues if (s := queue_sentence(q))]
    out += [s for f in r.frontends if (s := share_sentence(f, replaced_pods(r, f.name)))]
    for name, reason in r.skipped.items():
        out.append(f"{name} was skipped: {reason}.")
    return out


Group = tuple[str, float, dict[str, list[FailoverStats]]]


def _event_groups(fes: Sequence[FrontendStats]) -> list[Group]:
    """Timeline events across front ends and repeats, matched by name and offset (every phase fires
    the same timeline): (event, at_s, {front end: one entry per repeat})."""
    groups: dict[tuple[str, float], dict[str, list[FailoverStats]]] = {}
    for f in fes:
        for e in f.failover:
            groups.setdefault((e.event, round(e.at_s, 1)), {}).setdefault(f.name, []).append(e)
    return [(event, at, members) for (event, at), members in sorted(groups.items(), key=lambda g: g[0][1])]


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _loss_phrase(name: str, runs: list[FailoverStats], first: bool) -> str:
    """One front end's losses for one event; several repeats are listed, not averaged."""
    lost = [e.lost for e in runs]
    windows = [e.error_window_s for e in runs]
    if not any(lost) and not any(windows):
        text = f"{name} lost 0"
    elif len(runs) == 1:
        over = f" over {windows[0]:.2f} s" if windows[0] else ""
        text = f"{name} lost {_plural(lost[0], 'request')}{over}"
    else:
        each = ", ".join(map(str, lost))
        over = ", ".join(f"{w:.2f}" for w in windows)
        text = f"{name} lost {each} requests over {over} s in its {len(runs)} repeats"
    recoveries = [e.recovery_s for e in runs]
    if any(r is None for r in recoveries):
        return text + (
            " and had not recovered when the run ended"
            if len(runs) == 1
            else " and did not always recover before the run ended"
        )
    slowest = max(r for r in recoveries if r is not None)
    if slowest > 0:
        text += f" (recovered after {slowest:.2f} s)" if first else f" ({slowest:.2f} s)"
    return text


def failover_sentences(fes: Sequence[FrontendStats]) -> list[str]:
    out = []
    for event, at, members in _event_groups(fes):
        order = sorted(members.items(), key=lambda m: -sum(e.lost for e in m[1]))
        phrases = [_loss_phrase(name, runs, i == 0) for i, (name, runs) in enumerate(order)]
        out.append(f"During {event} at {at:.1f} s, " + "; ".join(phrases) + ".")
    return out


def tail_sentence(fes: Sequence[FrontendStats]) -> str | None:
    measured = sorted((p99, f.name) for f in fes if (p99 := f.latency_s.get("p99")) is not None)
    if not measured:
        return None
    listed = ", ".join(f"{name} {fmt_ms(p99)} ms" for p99, name in measured)
    text = f"p99 latency of successful requests: {listed}."
    (best, best_name), (worst, worst_name) = measured[0], measured[-1]
    if len(measured) > 1 and best and worst / best >= 1.2:
        text += f" {best_name}'s tail is {worst / best:.1f}x shorter than {worst_name}'s."
    return text


def error_sentence(fes: Sequence[FrontendStats]) -> str | None:
    if not fes:
        return None
    parts = []
    for f in fes:
        if not f.error_count:
            parts.append(f"{f.name} none")
            continue
        kinds = ", ".join(f"{k} {n}" for k, n in sorted(f.errors.items(), key=lambda kv: -kv[1]))
        share = f.error_count / f.requests if f.requests else 0.0
        parts.append(f"{f.name} {f.error_count:,} of {f.requests:,} ({share:.2%}: {kinds})")
    return "Failed requests: " + "; ".join(parts) + "."


def queue_sentence(q: QueueStats) -> str:
    if q.pod_wait_mean_ms is None or q.outside_mean_ms is None:
        return ""
    proxy = ""
    if q.proxy_queue_max is not None:
        proxy = (
            "its own queue stayed empty"
            if q.proxy_queue_max == 0
            else f"its own queue held up to {q.proxy_queue_max:.0f} requests "
            f"(mean {q.proxy_queue_mean or 0:.2f})"
        )
    where = "at the pods" if q.queue_at == "pods" else "before the pods (front end, network, client)"
    text = (
        f"{q.frontend}: requests waited mostly {where}: mean {q.pod_wait_mean_ms:.3g} ms "
        f"(p99 {q.pod_wait_p99_ms or 0:.3g} ms) in a pod's queue against {q.outside_mean_ms:.3g} ms "
        f"(p99 {q.outside_p99_ms or 0:.3g} ms) outside the pod"
    )
    return text + (f"; {proxy}." if proxy else ".")


def replaced_pods(r: Results, frontend: str) -> bool:
    """Did a pod start after the load began (a replacement, a scale-up, a rolling update)?"""
    ev = r.events
    if not len(ev):
        return False
    started = ev.loc[(ev["frontend"] == frontend) & (ev["kind"] == "pod_started") & (ev["at_s"] > 0)]
    return bool(len(started))


def share_sentence(f: FrontendStats, replaced: bool) -> str:
    if len(f.pod_share) < 2:
        return ""
    lo, hi = min(f.pod_share.values()), max(f.pod_share.values())
    note = " (some pods started during the run, so they served less)" if replaced else ""
    return (
        f"{f.name} spread successful requests over {len(f.pod_share)} pods, from {lo:.1%} to {hi:.1%} "
        f"each{note}."
    )
