"""Process trees (a master and its workers, recursively): members, CPU seconds, reaping.

From /proc via psutil. A tree is counted by what is alive when it is looked at: a process
that died in between two looks is lost (its last ticks are not visible any more).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable

import psutil


def tree(pid: int, *, children: bool = True) -> list[psutil.Process]:
    """`pid` and (with `children`) every live descendant: nginx workers, httpd children...; [] if `pid` is gone."""
    try:
        root = psutil.Process(pid)
        return [root, *(root.children(recursive=True) if children else ())]
    except psutil.Error:
        return []


def tree_pids(pids: Iterable[int]) -> set[int]:
    """The given processes and every live descendant."""
    return {p.pid for pid in pids for p in tree(pid)}


def process_cpu_s(p: psutil.Process) -> float:
    """user + system CPU seconds of one process (0 if it is gone)."""
    try:
        t = p.cpu_times()
    except psutil.Error:
        return 0.0
    return float(t.user + t.system)


def tree_cpu_s(pid: int, *, children: bool = True) -> float | None:
    """CPU seconds of `pid` (and its live descendants), summed; None if `pid` is gone."""
    procs = tree(pid, children=children)
    return sum(process_cpu_s(p) for p in procs) if procs else None


def cpu_s(pids: Iterable[int]) -> dict[int, float]:
    """user + system CPU seconds per live process of the trees rooted at `pids`."""
    return {p.pid: process_cpu_s(p) for pid in pids for p in tree(pid)}


def used_s(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU used between two `cpu_s` samples; a process born in between counts from zero.

    Front ends keep their processes for the whole measurement, so losing one that died in
    between is rare.
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


def gone(p: psutil.Process) -> bool:
    """Exited, or a zombie (reaping orphans is init's job, not ours)."""
    try:
        return not p.is_running() or p.status() == psutil.STATUS_ZOMBIE
    except psutil.Error:
        return True


def reap(procs: list[psutil.Process], timeout_s: float = 3.0) -> None:
    """Wait for `procs` (a stopped master's workers) to go; SIGKILL any left (they are ours)."""
    deadline = time.monotonic() + timeout_s
    while not all(gone(p) for p in procs) and time.monotonic() < deadline:
        time.sleep(0.01)
    for p in procs:
        if not gone(p):
            with contextlib.suppress(psutil.Error):
                p.kill()
