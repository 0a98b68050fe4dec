"""Service-time models of a pod: how long one request occupies one slot."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Literal

import numpy as np

Kind = Literal["const", "exp", "lognormal", "uniform"]

_DURATION = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(ns|us|µs|ms|s|m)?\s*$")
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, None: 1.0}


def parse_duration(text: str | float | int, unit_required: bool = True) -> float:
    """'10ms' -> 0.01; '1.5s' -> 1.5. Raises ValueError.

    A number without a unit is refused unless `unit_required` is False (then it is seconds):
    `exp:10` read as 10 s once ran a whole experiment at 0.28 rps without a word.
    """
    if isinstance(text, bool):
        raise ValueError(f"expected a duration like '10ms', got {text!r}")
    if isinstance(text, int | float):
        if unit_required:
            raise ValueError(f"{text!r}: give a unit, e.g. '{text:g}ms' or '{text:g}s'")
        value = float(text)
    else:
        m = _DURATION.match(text)
        if not m:
            raise ValueError(f"expected a duration like '10ms', '250us' or '1.5s', got {text!r}")
        if m.group(2) is None and unit_required:
            raise ValueError(f"{text.strip()}: give a unit, e.g. {text.strip()}ms or {text.strip()}s")
        value = float(m.group(1)) * _UNITS[m.group(2)]
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"duration must be finite and >= 0, got {text!r}")
    return value


@dataclass(frozen=True)
class ServiceTime:
    """A distribution of service times, in seconds.

    const:MEAN, exp:MEAN, lognormal:MEAN,SIGMA (SIGMA of the underlying normal; the
    distribution is scaled so its mean is MEAN), uniform:LOW,HIGH.
    """

    kind: Kind
    mean_s: float
    sigma: float = 0.0
    low_s: float = 0.0
    high_s: float = 0.0

    @classmethod
    def parse(cls, text: str) -> ServiceTime:
        try:
            return cls._parse(text)
        except ValueError as e:
            if "give a unit" in str(e):  # name the whole spec: "exp:10: give a unit, e.g. 10ms"
                raise ValueError(f"{text}: give a unit, e.g. {str(e).split(':')[0]}ms") from None
            raise

    @classmethod
    def _parse(cls, text: str) -> ServiceTime:
        kind, sep, args = text.partition(":")
        parts = [a for a in args.split(",") if a.strip()] if sep else []
        if kind == "const" and len(parts) == 1:
            return cls("const", parse_duration(parts[0]))
        if kind == "exp" and len(parts) == 1:
            mean = parse_duration(parts[0])
            if mean <= 0:
                raise ValueError("exp: mean must be > 0")
            return cls("exp", mean)
        if kind == "lognormal" and len(parts) == 2:
            sigma = float(parts[1])
            if not 0 <= sigma <= 5:
                raise ValueError(f"lognormal sigma must be in [0, 5], got {sigma}")
            return cls("lognormal", parse_duration(parts[0]), sigma=sigma)
        if kind == "uniform" and len(parts) == 2:
            lo, hi = parse_duration(parts[0]), parse_duration(parts[1])
            if hi < lo:
                raise ValueError("uniform: HIGH must be >= LOW")
            return cls("uniform", (lo + hi) / 2, low_s=lo, high_s=hi)
        raise ValueError(
            f"expected const:MEAN, exp:MEAN, lognormal:MEAN,SIGMA or uniform:LOW,HIGH, got {text!r}"
        )

    def sample(self, rng: np.random.Generator) -> float:
        if self.kind == "const":
            return self.mean_s
        if self.kind == "exp":
            return float(rng.exponential(self.mean_s))
        if self.kind == "uniform":
            return float(rng.uniform(self.low_s, self.high_s))
        mu = math.log(self.mean_s) - self.sigma**2 / 2 if self.mean_s > 0 else -math.inf
        return float(rng.lognormal(mu, self.sigma)) if self.mean_s > 0 else 0.0

    @property
    def scv(self) -> float:
        """Squared coefficient of variation (variance / mean^2), used by G/G/c approximations."""
        if self.kind == "const" or self.mean_s == 0:
            return 0.0
        if self.kind == "exp":
            return 1.0
        if self.kind == "uniform":
            return ((self.high_s - self.low_s) ** 2 / 12) / self.mean_s**2
        return math.exp(self.sigma**2) - 1

    def __str__(self) -> str:
        if self.kind == "lognormal":
            return f"lognormal:{self.mean_s * 1e3:g}ms,{self.sigma:g}"
        if self.kind == "uniform":
            return f"uniform:{self.low_s * 1e3:g}ms,{self.high_s * 1e3:g}ms"
        return f"{self.kind}:{self.mean_s * 1e3:g}ms"
