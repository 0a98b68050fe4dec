"""Runs a rules loader (``nft -f FILE``, ``iptables-restore FILE``) for the kernel front ends.

Every applied file is kept, with its apply time and the loader's CPU time, under the front
end's artifacts folder (``applies.jsonl`` lists them); applies run one at a time, in call
order, so each one rebuilds from the latest state.
"""

from __future__ import annotations

import asyncio
import json
import resource
import shutil
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from lbbench.errors import UserError
from lbbench.system.netns import find_tool
from lbbench.system.procs import Supervisor
from lbbench.system.scratch import private_dir


def _children_cpu_s() -> float:
    """CPU seconds of this process's reaped children (the loader is reaped when it exits)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


class RulesApplier:
    """Runs a rules loader through the supervisor; keeps every applied file and counts applies."""

    def __init__(self, supervisor: Supervisor, directory: Path | None, tool: str, args: Sequence[str],
                 suffix: str, prefix: str) -> None:
        path = find_tool(tool)
        if path is None:
            raise UserError(f"{tool} is not installed")
        self.argv = [path, *args]
        self.suffix = suffix
        self.prefix = prefix  # counter names: nft_applies_total, iptables_applies_total
        self.supervisor = supervisor
        self._tmp: Path | None = None
        if directory is None:
            directory = self._tmp = private_dir("rules")  # swept by the next run if this one is killed
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.applies = 0
        self.total_s = 0.0
        self.last_s = 0.0
        self.max_s = 0.0
        self.cpu_total_s = 0.0
        self.last_cpu_s = 0.0  # the loader's user+system CPU in the last apply (other children may add noise)
        self._lock = asyncio.Lock()

    async def apply(self, text: str, reason: str, args: Sequence[str] = ()) -> float:
        """Apply one transaction (`args` go before the file); returns its duration.

        Raises RuntimeError if the tool refuses it."""
        async with self._lock:  # one at a time, in call order: each rebuilds from the latest state
            seq = self.applies + 1
            path = self.directory / f"{seq:04d}{self.suffix}"
            path.write_text(f"# lbbench apply #{seq}: {reason}\n{text}")
            err_path = self.directory / f"{seq:04d}.err"
            wall = time.time()
            cpu0 = _children_cpu_s()
            started = time.perf_counter()
            with err_path.open("wb") as err:
                child = self.supervisor.spawn(f"{self.prefix}-{seq}", [*self.argv, *args, str(path)],
                                              stdin=subprocess.DEVNULL, stderr=err)
                rc = await child.wait()
            took = time.perf_counter() - started
            cpu = _children_cpu_s() - cpu0
            message = err_path.read_text(errors="replace").strip()
            err_path.unlink()
            self._record(seq, path, wall, took, cpu, rc, reason, args)
            if rc != 0:
                raise RuntimeError(f"{' '.join([*self.argv, *args])} {path} failed (exit {rc}): {message}")
            self.applies = seq
            self.total_s += took
            self.last_s = took
            self.max_s = max(self.max_s, took)
            self.cpu_total_s += cpu
            self.last_cpu_s = cpu
            return took

    def _record(self, seq: int, path: Path, wall: float, took: float, cpu: float, rc: int, reason: str,
                args: Sequence[str]) -> None:
        entry = {"seq": seq, "file": path.name, "applied_unix_s": round(wall, 6),
                 "apply_ms": round(took * 1e3, 3), "cpu_ms": round(cpu * 1e3, 3), "args": list(args), "exit_status": rc,
                 "reason": reason}
        with (self.directory / "applies.jsonl").open("a") as f:
            f.write(json.dumps(entry) + "\n")

    def counters(self) -> dict[str, float]:
        p = self.prefix
        return {f"{p}_applies_total": self.applies, f"{p}_apply_seconds_total": self.total_s,
                f"{p}_apply_last_ms": self.last_s * 1e3, f"{p}_apply_max_ms": self.max_s * 1e3,
                f"{p}_apply_cpu_seconds_total": self.cpu_total_s}

    def close(self) -> None:
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None
