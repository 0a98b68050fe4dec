"""The run's event log: what happened, when, to what (pod_started, endpoints_synced, ...)."""

from __future__ import annotations

import csv
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class LoggedEvent:
    at_s: float  # seconds since the log's t0 (monotonic)
    kind: str
    target: str
    detail: str = ""


@dataclass
class EventLog:
    """Append-only, ordered by time. `t0` is a time.monotonic() instant (the load's t=0)."""

    t0: float = field(default_factory=time.monotonic)
    events: list[LoggedEvent] = field(default_factory=list)
    listeners: list[Callable[[LoggedEvent], None]] = field(default_factory=list)

    def log(self, kind: str, target: str, detail: str = "", at_s: float | None = None) -> LoggedEvent:
        ev = LoggedEvent(time.monotonic() - self.t0 if at_s is None else at_s, kind, target, detail)
        self.events.append(ev)
        for listener in self.listeners:
            listener(ev)
        return ev

    def rebase(self, t0: float) -> None:
        """Move t=0 (e.g. to the load's start); earlier events get negative times."""
        shift = self.t0 - t0
        self.events = [LoggedEvent(e.at_s + shift, e.kind, e.target, e.detail) for e in self.events]
        self.t0 = t0

    def of_kind(self, kind: str) -> list[LoggedEvent]:
        return [e for e in self.events if e.kind == kind]

    def write_csv(self, path: Path, extra: dict[str, str] | None = None, append: bool = False) -> None:
        extra = extra or {}
        new = not (append and path.exists())
        with path.open("a" if append else "w", newline="") as fh:
            w = csv.writer(fh)
            if new:
                w.writerow(["at_s", "kind", "target", "detail", *extra])
            for e in self.events:
                w.writerow([f"{e.at_s:.6f}", e.kind, e.target, e.detail, *extra.values()])
