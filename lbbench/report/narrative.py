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


def _event_groups(fes: Sequence[FrontendStats]) -> list[tuple[str, float, list[tuple[str, FailoverStats]]]]:
    """Timeline events across front ends, matched by name and order (each phase fires the same timeline)."""
    groups: dict[tuple[str, int], list[tuple[str, FailoverStats]]] = {}
    for f in fes:
        seen: dict[str, int] = {}
        for e in f.failover:
            k = seen.get(e.event, 0)
            seen[e.event] = k + 1
            groups.setdefault((e.event, k), []).append((f.name, e))
    return [(event, min(e.at_s for _, e in members), members) for (event, _), members in groups.items()]


def _loss_phrase(name: str, e: FailoverStats, first: bool) -> str:
    if e.lost == 0 and e.error_window_s == 0:
        text = f"{name} lost 0"
    else:
        text = f"{name} lost {e.lost} request{'s' if e.lost != 1 else ''}"
        if e.error_window_s > 0:
            text += f" over {e.error_window_s:.2f} s"
    if e.recovery_s is None:
        text += " and had not recovered when the run ended"
    elif e.recovery_s > 0 and first:
        text += f" (recovered after {e.recovery_s:.2f} s)"
    elif e.recovery_s > 0:
        text += f" ({e.recovery_s:.2f} s)"
    return text


def failover_sentences(fes: Sequence[FrontendStats]) -> list[str]:
    out = []
    for event, at, members in _event_groups(fes):
        members = sorted(members, key=lambda m: -m[1].lost)
        phrases = [_loss_phrase(name, e, i == 0) for i, (name, e) in enumerate(members)]
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
