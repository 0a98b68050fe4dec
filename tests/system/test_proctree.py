"""Process trees (lbbench.system.proctree) and signal readiness (procs.handles_signal), on real processes."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import psutil
import pytest

from lbbench.system import proctree
from lbbench.system.procs import handles_signal

# A parent that sleeps and a child that burns CPU until killed: the tree's CPU is the child's.
_TREE = ("import subprocess, sys, time\n"
         "subprocess.Popen([sys.executable, '-c', 'while True: pass'])\n"
         "print('up', flush=True)\n"
         "time.sleep(300)\n")


@pytest.fixture
def burning_tree() -> Iterator[subprocess.Popen[str]]:
    parent = subprocess.Popen([sys.executable, "-c", _TREE], stdout=subprocess.PIPE, text=True)
    assert parent.stdout is not None and parent.stdout.readline().strip() == "up"
    try:
        yield parent
    finally:
        family = proctree.tree(parent.pid)
        parent.kill()
        parent.wait()
        proctree.reap(family, timeout_s=0.0)
        assert parent.stdout is not None
        parent.stdout.close()


def test_tree_cpu_counts_the_descendants(burning_tree: subprocess.Popen[str]) -> None:
    pid = burning_tree.pid
    assert len(proctree.tree(pid)) == 2 and proctree.tree_pids([pid]) == {p.pid for p in proctree.tree(pid)}
    deadline = time.monotonic() + 30
    while (proctree.tree_cpu_s(pid) or 0.0) < 0.2 and time.monotonic() < deadline:
        time.sleep(0.05)
    whole, alone = proctree.tree_cpu_s(pid), proctree.tree_cpu_s(pid, children=False)
    assert whole is not None and alone is not None
    assert whole >= 0.2 and whole - alone >= 0.15  # the burning child, not the sleeping parent
    before = proctree.cpu_s([pid])
    assert set(before) == proctree.tree_pids([pid])
    assert proctree.used_s(before, before) == 0.0


def test_a_gone_process_has_no_cpu_and_reap_kills_what_is_left(burning_tree: subprocess.Popen[str]) -> None:
    family = proctree.tree(burning_tree.pid)
    burning_tree.kill()
    burning_tree.wait()
    assert proctree.tree_cpu_s(burning_tree.pid) is None and proctree.tree(burning_tree.pid) == []
    orphan = family[1]
    assert not proctree.gone(orphan)  # the burning child outlived its parent
    proctree.reap(family, timeout_s=0.1)
    psutil.wait_procs([orphan], timeout=5)
    assert proctree.gone(orphan)


def test_handles_signal_reads_the_caught_mask() -> None:
    script = ("import signal, sys, time\n"
              "signal.signal(signal.SIGUSR2, lambda *_: None)\n"
              "print('up', flush=True)\ntime.sleep(300)\n")
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "up"
        assert handles_signal(child.pid, signal.SIGUSR2)
        assert not handles_signal(child.pid, signal.SIGUSR1)
    finally:
        child.kill()
        child.wait()
        assert child.stdout is not None
        child.stdout.close()
    assert not handles_signal(child.pid, signal.SIGUSR2)  # gone
