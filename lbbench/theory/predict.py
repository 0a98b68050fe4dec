"""Queueing-theory predictions for each way of balancing N pods with c slots each.

The four balancing models, by the key `predict` returns them under:

- ``random_split``: each request goes to a pod chosen uniformly at random (kube-proxy DNAT with a
  new connection per request). Poisson arrivals thin into N independent Poisson streams, so each
  pod is an M/M/c at rate/N.
- ``shared_queue``: one central FIFO queue; a request starts when any of the N*c slots frees (an
  L7 proxy with maxconn = slots per pod). M/M/(N*c), Erlang C.
- ``round_robin``: pods take turns over one global stream; each pod sees every N-th arrival, so
  Erlang-N interarrivals: E_N/M/c, exact via GI/M/c.
- ``p2c``: power of two choices (sample two pods, join the one with fewer requests), Mitzenmacher's
  mean-field fixed point, exact only as N -> infinity.

Every model assumes a stationary system, FCFS at each queue, service times independent of each
other and of arrivals, and nothing the harness adds (network, proxy and client overhead, retries,
timeouts). The formulas themselves live in `theory_queues` and `theory_p2c`.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass
from typing import Literal, Protocol

from lbbench.model.servicetime import ServiceTime
from lbbench.theory.p2c import (
    SupermarketResponse,
    mitzenmacher_mean_service_times,
    power_of_d,
    supermarket_tail,
)
from lbbench.theory.queues import (
    GIMC_MAX_SERVERS,
    ExpWaitResponse,
    Renewal,
    UnstableError,
    allen_cunneen_mean_wait,
    dm1,
    erlang_b,
    erlang_c,
    gim1,
    gimc,
    md1_mean_wait,
    mg1_mean_wait,
    mm1,
    mmc,
    random_split,
    round_robin,
)

__all__ = [
    "MODEL_KEYS",
    "Arrivals",
    "ExpWaitResponse",
    "ModelPrediction",
    "Renewal",
    "SupermarketResponse",
    "UnstableError",
    "allen_cunneen_mean_wait",
    "dm1",
    "erlang_b",
    "erlang_c",
    "gim1",
    "gimc",
    "md1_mean_wait",
    "mg1_mean_wait",
    "mitzenmacher_mean_service_times",
    "mm1",
    "mmc",
    "power_of_d",
    "predict",
    "random_split",
    "round_robin",
    "supermarket_tail",
    "utilisation",
    "utilisation_to_rate",
]

Arrivals = Literal["poisson", "constant"]
MODEL_KEYS = ("random_split", "shared_queue", "round_robin", "p2c")


@dataclass(frozen=True)
class ModelPrediction:
    """What one balancing model predicts. None means the model gives no such number (see note)."""

    model: str
    utilisation: float
    mean_s: float | None
    p50_s: float | None
    p99_s: float | None
    p_wait: float | None
    mean_wait_s: float | None
    exact: bool
    note: str

    def as_dict(self) -> dict[str, object]:
        return dataclasses.asdict(self)


class _Distribution(Protocol):
    @property
    def mean_s(self) -> float: ...
    @property
    def mean_wait_s(self) -> float: ...
    @property
    def p_wait(self) -> float: ...
    def quantile(self, q: float) -> float: ...


@dataclass(frozen=True)
class _Inputs:
    pods: int
    slots: int
    service: ServiceTime
    rate_rps: float
    arrivals: Arrivals
    rho: float

    @property
    def poisson(self) -> bool:
        return self.arrivals == "poisson"


def _require_count(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


def utilisation(pods: int, slots: int, service: ServiceTime, rate_rps: float) -> float:
    """Per-slot utilisation rho = rate * E[S] / (pods * slots)."""
    _require_count("pods", pods)
    _require_count("slots", slots)
    if not (math.isfinite(rate_rps) and rate_rps > 0):
        raise ValueError(f"rate must be finite and > 0 requests/s, got {rate_rps!r}")
    return rate_rps * service.mean_s / (pods * slots)


def utilisation_to_rate(pods: int, slots: int, service: ServiceTime, rho: float) -> float:
    """The arrival rate (requests/s) that loads every slot to utilisation rho."""
    _require_count("pods", pods)
    _require_count("slots", slots)
    if not (math.isfinite(rho) and rho > 0):
        raise ValueError(f"utilisation must be finite and > 0, got {rho!r}")
    if service.mean_s <= 0:
        raise ValueError(f"service time {service} has mean 0: no rate gives utilisation {rho}")
    return rho * pods * slots / service.mean_s


def predict(
    pods: int, slots: int, service: ServiceTime, rate_rps: float, arrivals: Arrivals = "poisson"
) -> dict[str, ModelPrediction]:
    """Predictions of every balancing model, keyed by MODEL_KEYS.

    Raises ValueError for malformed input (pods/slots < 1, rate <= 0, unknown arrivals). An
    unstable load (utilisation >= 1) is not an error here: every model comes back with None values
    and a note starting "unstable:", so a sweep can be reported whole.
    """
    rho = utilisation(pods, slots, service, rate_rps)
    if arrivals not in ("poisson", "constant"):
        raise ValueError(f"arrivals must be 'poisson' or 'constant', got {arrivals!r}")
    if service.mean_s <= 0:
        return _all_none(rho, f"no model: service time {service} is zero, nothing queues")
    if rho >= 1:
        capacity = pods * slots / service.mean_s
        return _all_none(rho, f"unstable: utilisation {rho:.3g} >= 1 (capacity {capacity:.4g} requests/s)")
    x = _Inputs(int(pods), int(slots), service, float(rate_rps), arrivals, float(rho))
    exp_service = service.kind == "exp"
    return {
        "random_split": _random_split(x) if exp_service else _random_split_general(x),
        "shared_queue": _shared_queue(x) if exp_service else _shared_queue_general(x),
        "round_robin": _round_robin(x) if exp_service else _round_robin_general(x),
        "p2c": _p2c(x),
    }


def _all_none(rho: float, note: str) -> dict[str, ModelPrediction]:
    return {k: ModelPrediction(k, rho, None, None, None, None, None, False, note) for k in MODEL_KEYS}


def _from_distribution(model: str, x: _Inputs, d: _Distribution, exact: bool, note: str) -> ModelPrediction:
    return ModelPrediction(
        model=model,
        utilisation=x.rho,
        mean_s=d.mean_s,
        p50_s=d.quantile(0.5),
        p99_s=d.quantile(0.99),
        p_wait=d.p_wait,
        mean_wait_s=d.mean_wait_s,
        exact=exact,
        note=note,
    )


def _mean_only(
    model: str, x: _Inputs, mean_wait_s: float, p_wait: float | None, exact: bool, note: str
) -> ModelPrediction:
    mean_s = mean_wait_s + x.service.mean_s
    return ModelPrediction(model, x.rho, mean_s, None, None, p_wait, mean_wait_s, exact, note)


def _allen_cunneen(model: str, x: _Inputs, servers: int, rate_rps: float, ca2: float, why: str) -> ModelPrediction:
    wq = allen_cunneen_mean_wait(servers, rate_rps, x.service.mean_s, ca2, x.service.scv)
    note = f"{why}; Allen-Cunneen approximation (ca2={ca2:.3g}, cs2={x.service.scv:.3g}): mean only"
    return _mean_only(model, x, wq, None, False, note)


# --- exponential service: exact models ------------------------------------------------------------


def _random_split(x: _Inputs) -> ModelPrediction:
    c, n = x.slots, x.pods
    if x.poisson:
        d = random_split(n, c, x.rate_rps, x.service.mean_s)
        note = f"random pod per request: Poisson thinning -> {n} independent M/M/{c} at rate/{n}"
        return _from_distribution(f"{n} x M/M/{c}", x, d, True, note)
    if c > GIMC_MAX_SERVERS:
        return _allen_cunneen(f"{n} x G/M/{c}", x, c, x.rate_rps / n, 1 - 1 / n, "too many slots for GI/M/c")
    gaps = Renewal("thinned_deterministic", x.rate_rps / n, keep=1 / n)
    note = f"constant-rate stream, random pod per request: geometric gaps at each pod, {n} x GI/M/{c} (exact)"
    return _from_distribution(f"{n} x GI/M/{c}", x, gimc(c, gaps, x.service.mean_s), True, note)


def _shared_queue(x: _Inputs) -> ModelPrediction:
    servers = x.pods * x.slots
    if x.poisson:
        note = f"one FIFO queue feeding {servers} slots (proxy maxconn = slots): Erlang C"
        return _from_distribution(f"M/M/{servers}", x, mmc(servers, x.rate_rps, x.service.mean_s), True, note)
    if servers > GIMC_MAX_SERVERS:
        return _allen_cunneen(f"D/M/{servers}", x, servers, x.rate_rps, 0.0, "too many slots for GI/M/c")
    d = gimc(servers, Renewal("deterministic", x.rate_rps), x.service.mean_s)
    note = f"one FIFO queue feeding {servers} slots, constant-rate arrivals: D/M/{servers} via GI/M/c (exact)"
    return _from_distribution(f"D/M/{servers}", x, d, True, note)


def _round_robin(x: _Inputs) -> ModelPrediction:
    c, n = x.slots, x.pods
    if c > GIMC_MAX_SERVERS:
        ca2 = 1 / n if x.poisson else 0.0
        return _allen_cunneen(f"{n} x G/M/{c}", x, c, x.rate_rps / n, ca2, "too many slots for GI/M/c")
    if x.poisson:
        gaps = Renewal("erlang", x.rate_rps / n, phases=n)
        note = f"strict rotation over one Poisson stream: Erlang-{n} gaps, {n} x E{n}/M/{c} via GI/M/c (exact)"
        return _from_distribution(f"{n} x E{n}/M/{c}", x, gimc(c, gaps, x.service.mean_s), True, note)
    gaps = Renewal("deterministic", x.rate_rps / n)
    note = f"strict rotation over a constant-rate stream: {n} x D/M/{c} via GI/M/c (exact)"
    return _from_distribution(f"{n} x D/M/{c}", x, gimc(c, gaps, x.service.mean_s), True, note)


def _p2c(x: _Inputs) -> ModelPrediction:
    model = "power of 2 choices (mean field)"
    if x.service.kind != "exp":
        return ModelPrediction(
            model, x.rho, None, None, None, None, None, False,
            f"no model: the p2c mean-field model needs exponential service, not {x.service.kind}",
        )  # fmt: skip
    if not x.poisson:
        return ModelPrediction(
            model, x.rho, None, None, None, None, None, False,
            "no model: the p2c mean-field model needs Poisson arrivals",
        )  # fmt: skip
    if x.pods == 1:
        d1 = mmc(x.slots, x.rate_rps, x.service.mean_s)
        return _from_distribution(f"M/M/{x.slots}", x, d1, True, "one pod: nothing to choose, M/M/c")
    d = power_of_d(x.slots, x.rate_rps / x.pods, x.service.mean_s, d=2)
    note = (
        "Mitzenmacher mean-field fixed point, exact only as pods -> infinity; few pods do worse "
        "(simulated, 4 pods x 1 slot: mean +5%/+20%/+46%, p99 +6%/+28%/+75% at utilisation 0.5/0.8/0.9)"
    )
    return _from_distribution(model, x, d, False, note)


# --- non-exponential service: P-K where exact, else Allen-Cunneen ---------------------------------


def _pollaczek_khinchine(model: str, x: _Inputs, rate_rps: float, why: str) -> ModelPrediction:
    wq = mg1_mean_wait(rate_rps, x.service.mean_s, x.service.scv)
    note = f"{why}: M/G/1 Pollaczek-Khinchine, exact mean, no percentiles"
    return _mean_only(model, x, wq, rate_rps * x.service.mean_s, True, note)


def _random_split_general(x: _Inputs) -> ModelPrediction:
    c, n, k = x.slots, x.pods, x.service.kind
    if x.poisson and c == 1:
        return _pollaczek_khinchine(f"{n} x M/G/1", x, x.rate_rps / n, "random pod per request")
    ca2 = 1.0 if x.poisson else 1 - 1 / n
    return _allen_cunneen(f"{n} x G/G/{c}", x, c, x.rate_rps / n, ca2, f"random pod per request, {k} service")


def _shared_queue_general(x: _Inputs) -> ModelPrediction:
    servers, k = x.pods * x.slots, x.service.kind
    if x.poisson and servers == 1:
        return _pollaczek_khinchine("M/G/1", x, x.rate_rps, "one queue, one slot")
    ca2 = 1.0 if x.poisson else 0.0
    return _allen_cunneen(f"G/G/{servers}", x, servers, x.rate_rps, ca2, f"one FIFO queue, {k} service")


def _round_robin_general(x: _Inputs) -> ModelPrediction:
    c, n, k = x.slots, x.pods, x.service.kind
    if n == 1:
        return _random_split_general(x)
    ca2 = 1 / n if x.poisson else 0.0
    return _allen_cunneen(f"{n} x G/G/{c}", x, c, x.rate_rps / n, ca2, f"strict rotation, {k} service")
