"""CPU seconds spent by processes and all their live descendants (from /proc, via psutil)."""

from __future__ import annotations

from collections.abc import Iterable

import psutil


def tree_pids(pids: Iterable[int]) -> set[int]:
    """The given processes and every live descendant (nginx workers, httpd children...)."""
    out: set[int] = set()
    for pid in pids:
        try:
            root = psutil.Process(pid)
            out.add(pid)
            out.update(c.pid for c in root.children(recursive=True))
        except psutil.Error:
            continue
    return out


def cpu_s(pids: Iterable[int]) -> dict[int, float]:
    """user + system CPU seconds per live process of the trees rooted at `pids`."""
    out: dict[int, float] = {}
    for pid in tree_pids(pids):
        try:
            t = psutil.Process(pid).cpu_times()
        except psutil.Error:
            continue
        out[pid] = t.user + t.system
    return out


def used_s(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU used between two samples; a process born in between counts from zero.

    A process that died in between is lost (its last ticks are not visible any more);
    front ends keep their processes for the whole measurement, so this is rare.
    """
    return sum(max(0.0, t - before.get(pid, 0.0)) for pid, t in after.items())


def shape(pids: Iterable[int]) -> list[dict[str, int | str]]:
    """Name and thread count of every process in the trees: how much parallelism a peer has."""
    out: list[dict[str, int | str]] = []
    for pid in sorted(tree_pids(pids)):
        try:
            p = psutil.Process(pid)
            out.append({"name": p.name(), "threads": p.num_threads()})
        except psutil.Error:
            continue
    return out
