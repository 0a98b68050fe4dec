"""Per-run cgroups: found from mountinfo, joined by the exec wrapper, removed, swept."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from lbbench.system import cgroup

MOUNTINFO = """\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
"""


def test_cgroup2_mount_is_read_from_mountinfo() -> None:
    assert cgroup.cgroup2_mount(MOUNTINFO) == Path("/sys/fs/cgroup/unified")
    assert cgroup.cgroup2_mount(MOUNTINFO.replace("cgroup2 cgroup2", "cgroup cgroup")) is None


needs_cgroups = pytest.mark.skipif(cgroup.unavailable_reason() is not None,
                                   reason=f"cgroups: {cgroup.unavailable_reason()}")


@needs_cgroups
def test_exec_wrapper_joins_before_the_command_runs() -> None:
    cg = cgroup.RunCgroup("test wrapper/1")
    cg.create()
    try:
        assert cg.path.name == f"lbbench-test_wrapper_1-{os.getpid()}"
        out = subprocess.run(cgroup.cgroup_argv(cg.path, [sys.executable, "-c",
                                                          "print(open('/proc/self/cgroup').read())"]),
                             capture_output=True, text=True, check=True, timeout=30)
        assert f"0::/{cg.path.name}" in out.stdout.splitlines()
    finally:
        cg.remove()
    assert not cg.path.exists()


@needs_cgroups
def test_remove_kills_what_is_left_inside() -> None:
    cg = cgroup.RunCgroup("test-remove")
    cg.create()
    with subprocess.Popen(cgroup.cgroup_argv(cg.path, ["sleep", "60"])) as child:
        while not cgroup.procs(cg.path):
            if child.poll() is not None:
                pytest.fail("the wrapper exited")
        cg.remove()
        assert child.wait(5) == -9
    assert not cg.path.exists()


@needs_cgroups
def test_sweep_removes_only_empty_cgroups_of_dead_runs() -> None:
    mount = cgroup.cgroup2_mount()
    assert mount is not None
    with subprocess.Popen(["true"]) as gone:
        gone.wait()
    stale = mount / f"lbbench-crashed-{gone.pid}"
    alive = mount / f"lbbench-running-{os.getpid()}"
    stale.mkdir()
    alive.mkdir()
    try:
        removed = cgroup.sweep_stale(mount)
        assert stale in removed and alive not in removed
        assert alive.exists() and not stale.exists()
    finally:
        for p in (stale, alive):
            if p.exists():
                p.rmdir()
