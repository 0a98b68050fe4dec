"""The faults a pod can be told to play (error rate, slowness, hangs, closes, readiness)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Faults:
    error_rate: float = 0.0  # fraction of requests answered 503
    slow_factor: float = 1.0  # service time multiplier
    hang_rate: float = 0.0  # fraction of requests never answered
    close_rate: float = 0.0  # fraction of requests closed without a reply
    ready: bool = True  # /healthz answers 200 (else 503)

    def updated(self, changes: dict[str, Any]) -> Faults:
        known = {f.name for f in dataclasses.fields(self)}
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if k in known})
