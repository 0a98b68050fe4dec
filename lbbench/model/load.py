"""How clients connect and how the offered rate changes over a phase: shared by config, load and k8s."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

ConnectionKind = Literal["close", "keepalive"]


@dataclass(frozen=True)
class ConnectionMode:
    """`close`: a new TCP connection per request; `keepalive`: a pool of `pool` connections in total."""

    kind: ConnectionKind
    pool: int = 0

    def __post_init__(self) -> None:
        if self.kind not in ("close", "keepalive"):
            raise ValueError(f"connection mode must be 'close' or 'keepalive:K', got {self.kind!r}")
        if self.kind == "keepalive" and self.pool < 1:
            raise ValueError(f"keepalive needs a pool of at least 1 connection, got {self.pool}")
        if self.kind == "close" and self.pool != 0:
            raise ValueError("'close' mode takes no pool size")

    @classmethod
    def parse(cls, text: str) -> ConnectionMode:
        """'close' or 'keepalive:K' (K persistent connections in total)."""
        kind, sep, count = text.strip().partition(":")
        if kind == "close" and not sep:
            return cls("close")
        if kind == "keepalive" and sep:
            try:
                return cls("keepalive", int(count))
            except ValueError:
                pass
        raise ValueError(f"expected 'close' or 'keepalive:K' (K >= 1 connections), got {text!r}")

    def __str__(self) -> str:
        return "close" if self.kind == "close" else f"keepalive:{self.pool}"


@dataclass(frozen=True)
class RateStep:
    """From `at_s` on, the rate is `rate_rps`.

    `ramp=False`: the rate jumps at `at_s`. `ramp=True`: the rate moves linearly from the
    previous breakpoint (t=0 and `LoadSpec.rate_rps`, or the previous step) to `rate_rps`,
    reaching it at `at_s`.
    """

    at_s: float
    rate_rps: float
    ramp: bool = False
