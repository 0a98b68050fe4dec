"""No orphans: whatever way the parent dies, its children (and grandchildren) die within 2 s."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import time

import psutil
import pytest

DRIVER = textwrap.dedent("""
    import signal, sys, time
    from lbbench.system.procs import Supervisor, lbbench_argv
    from lbbench.cluster.standalone import start_pod
    sup = Supervisor()
    start_pod(sup, "orphan-check")
    # a process tree of the nginx kind: a child with its own children, none of ours
    sup.spawn("tree", ["sh", "-c", "sleep 300 & sleep 300 & wait"])
    time.sleep(0.3)
    print("READY", flush=True)
    def bye(*_):
        sup.close(); sys.exit(0)
    signal.signal(signal.SIGTERM, bye)
    try:
        sys.stdin.readline()  # the test says when to exit normally
        sup.close()
    except KeyboardInterrupt:
        sup.close()
""")


def descendants(pid: int) -> list[psutil.Process]:
    """Every process whose environment names `pid` as its lbbench parent, or is in its tree."""
    found = []
    for p in psutil.process_iter(["pid", "ppid", "cmdline"]):
        try:
            tree = {q.pid for q in p.parents()}
        except psutil.Error:
            continue
        if pid in tree:
            found.append(p)
    return found


def start_driver() -> tuple[subprocess.Popen[str], list[int]]:
    proc = subprocess.Popen([sys.executable, "-c", DRIVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True, start_new_session=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.strip() == "READY", line
    deadline = time.monotonic() + 10
    kids: list[int] = []
    while len(kids) < 5 and time.monotonic() < deadline:  # guard, pod, sh and its two sleeps
        time.sleep(0.05)
        kids = [p.pid for p in descendants(proc.pid)]
    assert len(kids) >= 5, kids
    return proc, kids


def assert_gone(pids: list[int], within_s: float = 2.0) -> None:
    deadline = time.monotonic() + within_s
    alive = pids
    while time.monotonic() < deadline:
        alive = [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
        if not alive:
            return
        time.sleep(0.05)
    left = []
    for p in alive:
        with contextlib.suppress(psutil.Error):
            left.append(" ".join(psutil.Process(p).cmdline()))
    for p in alive:  # do not leave them to the next test
        with contextlib.suppress(ProcessLookupError):
            os.kill(p, signal.SIGKILL)
    assert not left, f"orphans left {within_s}s after the parent died: {left}"


@pytest.mark.parametrize("how", ["exit", "sigint", "sigterm", "sigkill"])
def test_children_die_with_parent(how: str) -> None:
    proc, kids = start_driver()
    assert proc.stdin is not None
    if how == "exit":
        proc.stdin.write("exit\n")
        proc.stdin.flush()
    elif how == "sigint":
        proc.send_signal(signal.SIGINT)
    elif how == "sigterm":
        proc.send_signal(signal.SIGTERM)
    elif how == "sigkill":
        proc.kill()
    proc.wait(10)
    assert proc.stdout is not None
    proc.stdout.close()
    proc.stdin.close()
    assert_gone(kids)
