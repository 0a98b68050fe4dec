"""Process supervision: every process lbbench starts dies with it.

Three layers, so that no single failure leaves an orphan:

1. A *guard* process per Supervisor, in a process group of its own. Every child joins that
   group. The guard blocks reading a pipe from the parent; when the parent dies for any
   reason (exit, Ctrl-C, SIGTERM, SIGKILL) the pipe reaches EOF and the guard SIGKILLs the
   whole group, grandchildren included (nginx workers, httpd children).
2. lbbench's own Python children call :func:`die_with_parent` at start: PR_SET_PDEATHSIG.
3. Children are stopped in order on a normal teardown (SIGTERM, grace, SIGKILL).

Children do not share the terminal's foreground group, so Ctrl-C reaches only the parent,
which then tears down in order instead of every process dying at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import IO

PR_SET_PDEATHSIG = 1
PARENT_ENV = "LBBENCH_PARENT_PID"

_GUARD_CODE = (
    "import os,signal,sys\n"
    "signal.signal(signal.SIGINT, signal.SIG_IGN)\n"
    "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    "while sys.stdin.buffer.read(65536): pass\n"
    "os.killpg(os.getpgid(0), signal.SIGKILL)\n"
)


def die_with_parent() -> None:
    """Ask the kernel to SIGKILL this process when its parent dies (Linux only).

    Called first thing by every lbbench child entry point. If the parent already died
    between fork and this call, exit at once.
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):  # pragma: no cover - non-Linux
        return
    expected = os.environ.get(PARENT_ENV)
    if expected is not None and os.getppid() != int(expected):
        os._exit(1)


def handles_signal(pid: int, sig: int) -> bool:
    """Whether `pid` has a handler for `sig` installed and does not block it (Linux /proc).

    A signal sent before that may be dropped: HAProxy's master ignores a reload that comes early.
    """
    masks: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(("SigBlk:", "SigCgt:")):
                    key, value = line.split(":", 1)
                    masks[key] = int(value, 16)
    except (OSError, ValueError):
        return False
    bit = 1 << (sig - 1)
    return bool(masks.get("SigCgt", 0) & bit) and not masks.get("SigBlk", 0) & bit


def child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env[PARENT_ENV] = str(os.getpid())
    env.setdefault("PYTHONUNBUFFERED", "1")
    if extra:
        env.update(extra)
    return env


def lbbench_argv(*args: str) -> list[str]:
    """argv that runs an lbbench subcommand with this interpreter."""
    return [sys.executable, "-m", "lbbench", *args]


@dataclass
class Child:
    """A supervised child process."""

    name: str
    popen: subprocess.Popen[bytes]
    started_s: float = field(default_factory=time.monotonic)

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def stdin(self) -> IO[bytes] | None:
        return self.popen.stdin

    def poll(self) -> int | None:
        return self.popen.poll()

    def alive(self) -> bool:
        return self.popen.poll() is None

    def close_pipes(self) -> None:
        for pipe in (self.popen.stdin, self.popen.stdout, self.popen.stderr):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()

    def signal(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            if self.popen.poll() is None:
                os.kill(self.pid, sig)

    async def wait(self) -> int:
        """Wait for exit without blocking the loop or polling (pidfd readiness)."""
        if (rc := self.popen.poll()) is not None:
            return rc
        loop = asyncio.get_running_loop()
        try:
            fd = os.pidfd_open(self.pid)
        except (ProcessLookupError, OSError):
            return self.popen.wait()
        done: asyncio.Future[None] = loop.create_future()

        def exited() -> None:
            if not done.done():
                done.set_result(None)

        loop.add_reader(fd, exited)
        try:
            await done
        finally:
            loop.remove_reader(fd)
            os.close(fd)
        return self.popen.wait()

    async def stop(self, grace_s: float = 2.0) -> int:
        """SIGTERM, then SIGKILL after `grace_s`."""
        self.signal(signal.SIGTERM)
        try:
            return await asyncio.wait_for(self.wait(), grace_s)
        except TimeoutError:
            self.signal(signal.SIGKILL)
            return await self.wait()

    def stop_sync(self, grace_s: float = 2.0) -> int:
        self.signal(signal.SIGTERM)
        try:
            return self.popen.wait(grace_s)
        except subprocess.TimeoutExpired:
            self.signal(signal.SIGKILL)
            return self.popen.wait()


class Supervisor:
    """Starts children into one guarded process group and stops them all on close."""

    def __init__(self) -> None:
        self._guard = subprocess.Popen(
            [sys.executable, "-c", _GUARD_CODE],
            stdin=subprocess.PIPE,
            process_group=0,
            close_fds=True,
        )
        self.pgid = self._guard.pid
        self.children: list[Child] = []
        self._closed = False

    def spawn(
        self,
        name: str,
        argv: Sequence[str],
        *,
        stdin: int | None = subprocess.PIPE,
        stdout: int | IO[bytes] | None = subprocess.DEVNULL,
        stderr: int | IO[bytes] | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        pass_fds: Sequence[int] = (),
    ) -> Child:
        if self._closed:
            raise RuntimeError("supervisor is closed")
        popen = subprocess.Popen(
            list(argv),
            stdin=stdin,
            stdout=stdout,
            stderr=stderr,
            env=child_env(env),
            cwd=cwd,
            process_group=self.pgid,
            close_fds=True,
            pass_fds=tuple(pass_fds),  # e.g. a listening socket shared by worker processes
        )
        child = Child(name, popen)
        self.children.append(child)
        return child

    def forget_dead(self) -> None:
        self.children = [c for c in self.children if c.alive()]

    async def aclose(self, grace_s: float = 2.0) -> None:
        """Stop every child (SIGTERM, grace, SIGKILL), then release the guard."""
        live = [c for c in self.children if c.alive()]
        await asyncio.gather(*(c.stop(grace_s) for c in live), return_exceptions=True)
        self._release_guard()

    def close(self, grace_s: float = 2.0) -> None:
        for c in self.children:
            c.signal(signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for c in self.children:
            with contextlib.suppress(subprocess.TimeoutExpired):
                c.popen.wait(max(0.0, deadline - time.monotonic()))
        self._release_guard()

    def _release_guard(self) -> None:
        if self._closed:
            return
        self._closed = True
        # Closing the pipe makes the guard SIGKILL whatever is left in the group.
        if self._guard.stdin is not None:
            with contextlib.suppress(OSError):
                self._guard.stdin.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._guard.wait(5.0)
        for c in self.children:
            with contextlib.suppress(subprocess.TimeoutExpired):
                c.popen.wait(1.0)
            c.close_pipes()

    def __enter__(self) -> Supervisor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
