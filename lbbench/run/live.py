"""Live progress of a run: a rich table on a terminal, plain lines otherwise, only warnings with --quiet."""

from __future__ import annotations

import sys
import time
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table

from lbbench.cluster.events import LoggedEvent

SHOWN_EVENTS = ("event", "load_started", "pod_started", "pod_ready", "pod_killed", "pod_died", "pod_deleted",
                "pod_terminating", "endpoints_synced", "node_down", "node_not_ready", "phase_error", "scaled")


class LiveView:
    def __init__(self, quiet: bool = False) -> None:
        self.quiet = quiet
        # soft_wrap: in a pipe or CI log rich would hard-wrap at 80 columns; long lines stay whole
        self.console = Console(file=sys.stderr, soft_wrap=True)
        self.interactive = self.console.is_terminal and not quiet
        self.live: Live | None = None
        self.phase_label = ""
        self.phase_index = (0, 0)
        self.duration_s = 0.0
        self.last: dict[str, Any] = {}
        self.recent: list[str] = []
        self.controller: Any = None
        self._last_draw = 0.0
        self._run_started = time.monotonic()
        self._phase_started = self._run_started
        self._phase_walls: list[float] = []

    def start_phase(self, index: int, total: int, label: str, duration_s: float, controller: Any) -> None:
        now = time.monotonic()
        if index > 1:
            self._phase_walls.append(now - self._phase_started)
        self._phase_started = now
        self.phase_index, self.phase_label, self.duration_s = (index, total), label, duration_s
        self.controller = controller
        self.recent = []
        self.say(f"[bold]phase {index}/{total}[/]: {label}; run ETA {self.eta()}")
        if self.interactive and self.live is None:
            self.live = Live(self._render(), console=self.console, refresh_per_second=4, transient=True)
            self.live.start()

    def eta(self) -> str:
        """The whole run's remaining time: phases left x the mean wall time of a phase so far (set-up,
        load, teardown); before the first phase ends, its load duration plus a guess of 10 s for the rest."""
        index, total = self.phase_index
        per_phase = (sum(self._phase_walls) / len(self._phase_walls)) if self._phase_walls else self.duration_s + 10
        left = max(0.0, per_phase * (total - index + 1) - (time.monotonic() - self._phase_started))
        minutes, seconds = divmod(int(left), 60)
        return f"~{minutes}m{seconds:02d}s" if minutes else f"~{seconds}s"

    def end_phase(self, summary: str) -> None:
        self.say(summary)

    def stop(self) -> None:
        if self.live is not None:
            self.live.stop()
            self.live = None

    def say(self, text: str) -> None:
        if not self.quiet:
            self.console.print(text, highlight=False)

    def warn(self, text: str) -> None:
        """Said even with --quiet (on stderr): what the user must know to trust the folder."""
        if self.quiet:
            print(f"lbbench run: warning: {text}", file=sys.stderr)
        else:
            self.console.print(f"[yellow]warning[/]: {text}", highlight=False)

    def on_event(self, ev: LoggedEvent) -> None:
        if ev.kind not in SHOWN_EVENTS:
            return
        line = f"{ev.at_s:8.3f}s  {ev.kind:<17} {ev.target} {ev.detail}"
        self.recent = [*self.recent[-7:], line]
        if not self.interactive and ev.kind in ("event", "phase_error", "node_down", "load_started"):
            self.say(line)

    def on_progress(self, phase: Any, sample: dict[str, float]) -> None:
        gen = phase.generator
        if gen is None:
            return
        p = gen.progress()
        errors = {k: v for k, v in p.errors.items() if v}
        self.last = {"t_s": sample["t_s"], "done": p.done, "ok": p.ok, "errors": errors,
                     "p99": p.p99_last_s, "queue": sample.get("queue_len", 0.0),
                     "endpoints": sample.get("synced_endpoints", 0.0)}
        now = time.monotonic()
        if self.live is not None and now - self._last_draw > 0.2:
            self._last_draw = now
            self.live.update(self._render())

    def _render(self) -> Table:
        t = Table(title=f"phase {self.phase_index[0]}/{self.phase_index[1]}: {self.phase_label} "
                  f"(run ETA {self.eta()})", expand=False)
        for col in ("elapsed", "requests", "ok", "errors", "p99 (last s)", "proxy queue", "endpoints"):
            t.add_column(col)
        last = self.last
        if last:
            p99 = last.get("p99")
            t.add_row(f"{max(0.0, last['t_s']):.1f}/{self.duration_s:.0f}s", str(last["done"]), str(last["ok"]),
                      ", ".join(f"{k}={v}" for k, v in last["errors"].items()) or "0",
                      f"{p99 * 1e3:.1f} ms" if p99 else "-", f"{last['queue']:.0f}", f"{last['endpoints']:.0f}")
        pods = Table(title="pods", expand=False)
        for col in ("pod", "node", "ip", "ready"):
            pods.add_column(col)
        if self.controller is not None:
            for pod in sorted(self.controller.pods.values(), key=lambda p: p.name):
                if not pod.dead:
                    pods.add_row(pod.name, f"node-{pod.node}", pod.ip,
                                 "terminating" if pod.terminating else ("yes" if pod.ready else "no"))
        outer = Table.grid()
        outer.add_row(t)
        outer.add_row(pods)
        for line in self.recent:
            outer.add_row(line)
        return outer
