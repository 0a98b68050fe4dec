"""Per-run cgroup v2 directories: created and removed by lbbench, joined by an exec wrapper.

A socket's cgroup is fixed when the socket is created, so a client that must be balanced
by programs attached to a cgroup joins it *before* opening any socket: it is started through
:func:`cgroup_argv`, a ``/bin/sh`` line that writes its own pid to ``PATH/cgroup.procs`` and
execs the command (same pid, so the caller's Supervisor still owns it). A shell, not Python:
wrk's CPU and start are measured, and an interpreter's start would be counted in them.

The cgroup v2 mount is found in /proc/self/mountinfo (hybrid systems mount it at
``/sys/fs/cgroup/unified``, pure v2 systems at ``/sys/fs/cgroup``). A run's cgroup is
``lbbench-<run name>-<pid>``; one left behind by a crash (empty, its lbbench dead) is swept
by the next run.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import time
from collections.abc import Sequence
from pathlib import Path

PREFIX = "lbbench-"
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def cgroup2_mount(mountinfo: str | None = None) -> Path | None:
    """Where cgroup v2 is mounted (the first such mount), or None."""
    if mountinfo is None:
        try:
            mountinfo = Path("/proc/self/mountinfo").read_text()
        except OSError:
            return None
    for line in mountinfo.splitlines():
        fields, sep, rest = line.partition(" - ")
        if sep and rest.split(" ", 1)[0] == "cgroup2":
            return Path(fields.split(" ")[4].replace("\\040", " "))
    return None


def unavailable_reason() -> str | None:
    mount = cgroup2_mount()
    if mount is None:
        return "no cgroup v2 mount in /proc/self/mountinfo"
    if not os.access(mount, os.W_OK):
        return f"cannot create cgroups under {mount} (needs root)"
    return None


def procs(path: Path) -> list[int]:
    """Pids in the cgroup (empty if it is gone)."""
    try:
        return [int(p) for p in (path / "cgroup.procs").read_text().split()]
    except (OSError, ValueError):
        return []


def _owner_alive(name: str) -> bool:
    """Whether the lbbench named in ``lbbench-<run>-<pid>`` still runs (a zombie does not)."""
    pid = name.rsplit("-", 1)[-1]
    if not pid.isdigit():
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[:1] != ["Z"]


def sweep_stale(mount: Path | None = None) -> list[Path]:
    """Remove empty ``lbbench-*`` cgroups whose lbbench is dead; returns what was removed."""
    mount = mount or cgroup2_mount()
    if mount is None:
        return []
    removed: list[Path] = []
    for path in sorted(mount.glob(PREFIX + "*")):
        if path.is_dir() and not procs(path) and not _owner_alive(path.name):
            with contextlib.suppress(OSError):  # not empty after all (child cgroups): leave it
                path.rmdir()
                removed.append(path)
    return removed


class RunCgroup:
    """``<cgroup2 mount>/lbbench-<run>-<pid>``: made on create, killed and removed on remove."""

    def __init__(self, run_name: str, mount: Path | None = None) -> None:
        mount = mount or cgroup2_mount()
        if mount is None:
            raise OSError(errno.ENOENT, "no cgroup v2 mount in /proc/self/mountinfo")
        name = _UNSAFE.sub("_", run_name).strip("_")[:80] or "run"
        self.path = mount / f"{PREFIX}{name}-{os.getpid()}"
        self._fd: int | None = None

    def create(self) -> None:
        self.path.mkdir(exist_ok=True)
        self._fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)

    @property
    def fd(self) -> int:
        if self._fd is None:
            raise OSError(errno.EBADF, f"cgroup {self.path} is not created")
        return self._fd

    def remove(self, timeout_s: float = 2.0) -> None:
        """Kill what is left inside (cgroup.kill), wait until it is empty, remove it. Idempotent."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)
        if not self.path.exists():
            return
        if procs(self.path):
            with contextlib.suppress(OSError):
                (self.path / "cgroup.kill").write_text("1")
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                self.path.rmdir()
                return
            except FileNotFoundError:
                return
            except OSError as e:
                if e.errno != errno.EBUSY or time.monotonic() > deadline:
                    raise
                time.sleep(0.01)


def current() -> Path | None:
    """This process's cgroup v2 directory, or None."""
    mount = cgroup2_mount()
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    rel = next((line[3:] for line in lines if line.startswith("0::")), None)
    return None if mount is None or rel is None else mount / rel.lstrip("/")


def move_self(path: Path) -> None:
    """Move this whole process into the cgroup at `path`: sockets it opens from now on belong there."""
    (path / "cgroup.procs").write_text("0")


_JOIN_THEN_EXEC = 'echo $$ > "$0/cgroup.procs" || exit 126; exec "$@"'


def cgroup_argv(path: Path, argv: Sequence[str]) -> list[str]:
    """Wrap `argv` so that it runs inside the cgroup at `path`, joined before it starts (exit 126 if it cannot)."""
    if not argv:
        raise ValueError("cgroup_argv needs a command")
    return ["/bin/sh", "-c", _JOIN_THEN_EXEC, str(path), *argv]
