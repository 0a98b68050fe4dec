"""Single-station queueing formulas: Erlang B/C, M/M/c, GI/M/c, M/G/1 and Allen-Cunneen.

Units: rates in 1/s, times in s. Every model assumes FCFS order, a stationary (long-run) system,
i.i.d. service times independent of the arrivals, and no abandonment, retries or timeouts.
An unstable system (utilisation >= 1) raises `UnstableError`.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy.optimize import brentq

# The GI/M/c boundary uses alternating binomial sums; beyond this many servers their rounding
# error is no longer negligible (checked against Erlang C in the tests), so callers fall back.
GIMC_MAX_SERVERS = 20


class UnstableError(ValueError):
    """Offered load >= capacity: no steady state exists, queues grow without bound."""


def _check_stable(rho: float) -> None:
    if not rho < 1:
        raise UnstableError(f"unstable: utilisation {rho:.4g} >= 1")


def _check_positive(**values: float) -> None:
    for name, v in values.items():
        if not (math.isfinite(v) and v > 0):
            raise ValueError(f"{name} must be finite and > 0, got {v!r}")


def _check_servers(servers: int) -> None:
    if isinstance(servers, bool) or not isinstance(servers, numbers.Integral) or servers < 1:
        raise ValueError(f"servers must be an integer >= 1, got {servers!r}")


def erlang_b(servers: int, offered_erlangs: float) -> float:
    """Erlang B blocking probability of M/M/c/c (stable recursion, no factorials)."""
    _check_servers(servers)
    if not (math.isfinite(offered_erlangs) and offered_erlangs >= 0):
        raise ValueError(f"offered load must be finite and >= 0, got {offered_erlangs!r}")
    b = 1.0
    for k in range(1, servers + 1):
        b = offered_erlangs * b / (k + offered_erlangs * b)
    return b


def erlang_c(servers: int, offered_erlangs: float) -> float:
    """Erlang C: probability that an arrival waits in M/M/c with offered load a = lambda/mu < c."""
    _check_stable(offered_erlangs / servers)
    b = erlang_b(servers, offered_erlangs)
    return servers * b / (servers - offered_erlangs * (1 - b))


def _phi(x: float) -> float:
    """(1 - e^-x) / x, continuous at 0."""
    return -math.expm1(-x) / x if x > 1e-12 else 1.0 - x / 2


def hypoexp_sf(rate_a: float, rate_b: float, t: float) -> float:
    """P(X + Y > t) for independent X ~ Exp(rate_a), Y ~ Exp(rate_b); exact also when the rates meet."""
    if t <= 0:
        return 1.0
    m, d = min(rate_a, rate_b), abs(rate_a - rate_b)
    # Written around the smaller rate so nothing overflows and rate_a == rate_b needs no branch.
    return math.exp(-m * t) * (1 + m * t * _phi(d * t))


def _quantile(sf: Callable[[float], float], q: float, scale_s: float) -> float:
    if not 0 < q < 1:
        raise ValueError(f"quantile must be in (0, 1), got {q!r}")
    target = 1 - q
    if sf(0.0) <= target:
        return 0.0
    hi = scale_s
    for _ in range(200):  # 2^200 mean response times: only a broken sf gets this far
        if sf(hi) <= target:
            break
        hi *= 2
    else:
        raise ArithmeticError(f"no {q} quantile found below {hi:g} s")
    return float(brentq(lambda t: sf(t) - target, 0.0, hi, xtol=1e-15 * hi, rtol=1e-13))


@dataclass(frozen=True)
class ExpWaitResponse:
    """Response time T = W + S, the shape shared by M/M/1, M/M/c and GI/M/c (FCFS).

    W = 0 with probability 1 - p_wait, else W ~ Exp(wait_rate); S ~ Exp(service_rate) is independent
    of W (the tagged request's own service does not depend on how long it waited).
    """

    p_wait: float
    wait_rate: float
    service_rate: float

    @property
    def mean_wait_s(self) -> float:
        return self.p_wait / self.wait_rate

    @property
    def mean_s(self) -> float:
        return self.mean_wait_s + 1 / self.service_rate

    def wait_sf(self, t: float) -> float:
        return 1.0 if t < 0 else self.p_wait * math.exp(-self.wait_rate * t)

    def sf(self, t: float) -> float:
        """P(T > t), closed form."""
        if t <= 0:
            return 1.0
        return (1 - self.p_wait) * math.exp(-self.service_rate * t) + self.p_wait * hypoexp_sf(
            self.wait_rate, self.service_rate, t
        )

    def quantile(self, q: float) -> float:
        """Response-time quantile: the exact CDF inverted by root finding."""
        return _quantile(self.sf, q, self.mean_s)

    def wait_quantile(self, q: float) -> float:
        if not 0 < q < 1:
            raise ValueError(f"quantile must be in (0, 1), got {q!r}")
        return 0.0 if 1 - q >= self.p_wait else math.log(self.p_wait / (1 - q)) / self.wait_rate


def mm1(rate_rps: float, mean_service_s: float) -> ExpWaitResponse:
    """M/M/1: Poisson arrivals, one server, exponential service. T ~ Exp(mu - lambda) exactly."""
    return mmc(1, rate_rps, mean_service_s)


def mmc(servers: int, rate_rps: float, mean_service_s: float) -> ExpWaitResponse:
    """M/M/c (Erlang C): Poisson arrivals, c identical servers, one FCFS queue, exponential service.

    Exact: P(wait) = C(c, a); W | W > 0 ~ Exp(c*mu - lambda); T = W + S has a closed-form CDF.
    """
    _check_servers(servers)
    _check_positive(rate_rps=rate_rps, mean_service_s=mean_service_s)
    mu = 1 / mean_service_s
    a = rate_rps / mu
    c = erlang_c(servers, a)
    return ExpWaitResponse(p_wait=c, wait_rate=servers * mu - rate_rps, service_rate=mu)


def random_split(pods: int, slots: int, rate_rps: float, mean_service_s: float) -> ExpWaitResponse:
    """Poisson stream sent to one of `pods` uniformly at random per request, each pod an FCFS M/M/c.

    Poisson thinning makes each pod an independent M/M/slots at rate/pods, so a request's response
    time has exactly that pod's distribution (N x M/M/1 for one slot).
    """
    _check_servers(pods)
    return mmc(slots, rate_rps / pods, mean_service_s)


ArrivalKind = Literal["poisson", "erlang", "deterministic", "thinned_deterministic"]


@dataclass(frozen=True)
class Renewal:
    """A renewal arrival process at `rate_rps`, described by its interarrival LST A*(s) = E[e^{-sA}].

    erlang: `phases` exponential phases (every phases-th arrival of a Poisson stream: round robin).
    thinned_deterministic: a constant-rate stream of rate rate_rps/keep where each arrival is kept
    independently with probability `keep` (random split of constant-rate traffic).
    """

    kind: ArrivalKind
    rate_rps: float
    phases: int = 1
    keep: float = 1.0

    def __post_init__(self) -> None:
        if self.kind not in ("poisson", "erlang", "deterministic", "thinned_deterministic"):
            raise ValueError(f"unknown arrival process {self.kind!r}")
        _check_positive(rate_rps=self.rate_rps)
        _check_servers(self.phases)
        if not 0 < self.keep <= 1:
            raise ValueError(f"keep must be in (0, 1], got {self.keep!r}")

    def lst(self, s: float) -> float:
        return 1 - self.one_minus_lst(s)

    def one_minus_lst(self, s: float) -> float:
        """1 - A*(s), computed without cancellation for small s."""
        lam = self.rate_rps
        if self.kind == "poisson":
            return s / (lam + s)
        if self.kind == "erlang":
            return -math.expm1(-self.phases * math.log1p(s / (self.phases * lam)))
        if self.kind == "deterministic":
            return -math.expm1(-s / lam)
        # Thinned: a geometric number of gaps of the unthinned stream's spacing keep/lam.
        d = self.keep / lam
        return -math.expm1(-s * d) / (1 - (1 - self.keep) * math.exp(-s * d))

    @property
    def scv(self) -> float:
        """Squared coefficient of variation of the interarrival time."""
        return {"poisson": 1.0, "erlang": 1 / self.phases, "deterministic": 0.0}.get(self.kind, 1 - self.keep)


def gim_sigma(arrivals: Renewal, servers: int, mu: float) -> float:
    """The GI/M/c root: sigma in (0, 1) with sigma = A*(c*mu*(1 - sigma))."""
    _check_stable(arrivals.rate_rps / (servers * mu))
    cmu = servers * mu

    # Divided by x to remove the trivial root x = 0; decreasing in x, > 0 at 0+ iff rho < 1.
    def h(x: float) -> float:
        return arrivals.one_minus_lst(cmu * x) / x - 1

    return 1 - float(brentq(h, 1e-300, 1.0, xtol=1e-16, rtol=1e-14))


def gimc(servers: int, arrivals: Renewal, mean_service_s: float) -> ExpWaitResponse:
    """GI/M/c: renewal arrivals, c exponential FCFS servers. Exact (Takacs).

    Arrivals see n >= c-1 in system with probability K*sigma^(n-c+1); the boundary probabilities
    for n < c-1 come from the embedded Markov chain's balance equations. Hence P(wait) =
    K*sigma/(1-sigma), and W | W > 0 ~ Exp(c*mu*(1-sigma)).
    """
    _check_servers(servers)
    _check_positive(rate_rps=arrivals.rate_rps, mean_service_s=mean_service_s)
    if servers > GIMC_MAX_SERVERS:
        raise ValueError(f"GI/M/c is computed for at most {GIMC_MAX_SERVERS} servers, got {servers}")
    mu = 1 / mean_service_s
    sigma = gim_sigma(arrivals, servers, mu)
    gamma = servers * mu * (1 - sigma)
    k = _gimc_tail_weight(servers, arrivals, mu, sigma, gamma)
    return ExpWaitResponse(p_wait=min(1.0, k * sigma / (1 - sigma)), wait_rate=gamma, service_rate=mu)


def _binomial_decay(n: int, j: int, transform: Callable[[float], float], mu: float) -> float:
    """E over the interarrival of C(n, j) e^{-j mu A} (1 - e^{-mu A})^(n-j), via `transform`."""
    total = sum((-1 if m % 2 else 1) * math.comb(n - j, m) * transform((j + m) * mu) for m in range(n - j + 1))
    return math.comb(n, j) * total


def _gimc_tail_weight(servers: int, arrivals: Renewal, mu: float, sigma: float, gamma: float) -> float:
    """K = P(an arrival sees exactly c-1 in system), from the c boundary equations."""
    c = servers
    if c == 1:
        return 1 - sigma

    def tail_transform(r: float) -> float:
        # E[(e^{-rA} - e^{-gamma A}) / (gamma - r)]; the limit at r == gamma is -A*'(gamma).
        if abs(gamma - r) > 1e-6 * gamma:
            return (arrivals.lst(r) - sigma) / (gamma - r)
        h = 1e-4 * gamma
        return (arrivals.lst(gamma - h) - arrivals.lst(gamma + h)) / (2 * h)

    # Unknowns x = (q_0 .. q_{c-2}, K); rows: balance of states 1..c-1, then normalisation.
    m = np.zeros((c, c))
    rhs = np.zeros(c)
    for j in range(1, c):
        m[j - 1, j] += 1.0  # q_j (column c-1 is K = q_{c-1})
        for i in range(j - 1, c - 1):
            m[j - 1, i] -= _binomial_decay(i + 1, j, arrivals.lst, mu)
        m[j - 1, c - 1] -= c * mu * _binomial_decay(c - 1, j, tail_transform, mu)
    m[c - 1, : c - 1] = 1.0
    m[c - 1, c - 1] = 1 / (1 - sigma)
    rhs[c - 1] = 1.0
    return float(np.linalg.solve(m, rhs)[c - 1])


def gim1(arrivals: Renewal, mean_service_s: float) -> ExpWaitResponse:
    """GI/M/1: P(wait) = sigma and T ~ Exp(mu*(1 - sigma)) exactly."""
    return gimc(1, arrivals, mean_service_s)


def dm1(rate_rps: float, mean_service_s: float) -> ExpWaitResponse:
    """D/M/1: constant interarrival times, exponential service; exact via GI/M/1."""
    return gim1(Renewal("deterministic", rate_rps), mean_service_s)


def round_robin(pods: int, slots: int, rate_rps: float, mean_service_s: float) -> ExpWaitResponse:
    """A Poisson stream dealt to pods in strict rotation: each pod sees every pods-th arrival.

    Interarrivals at a pod are Erlang-pods, so each pod is E_N/M/c; exact (GI/M/c) provided the
    rotation is over one global stream (not per connection or per worker).
    """
    _check_servers(pods)
    return gimc(slots, Renewal("erlang", rate_rps / pods, phases=pods), mean_service_s)


def mg1_mean_wait(rate_rps: float, mean_service_s: float, service_scv: float) -> float:
    """M/G/1 mean wait, Pollaczek-Khinchine: rho * (1 + cs^2) / 2 * E[S] / (1 - rho). Exact."""
    _check_positive(rate_rps=rate_rps, mean_service_s=mean_service_s)
    rho = rate_rps * mean_service_s
    _check_stable(rho)
    return rho * (1 + service_scv) / 2 * mean_service_s / (1 - rho)


def md1_mean_wait(rate_rps: float, mean_service_s: float) -> float:
    """M/D/1 mean wait rho / (2 mu (1 - rho)); Pollaczek-Khinchine with constant service."""
    return mg1_mean_wait(rate_rps, mean_service_s, 0.0)


def allen_cunneen_mean_wait(
    servers: int, rate_rps: float, mean_service_s: float, arrival_scv: float, service_scv: float
) -> float:
    """G/G/c mean wait, Allen-Cunneen approximation: Wq(M/M/c) * (ca^2 + cs^2) / 2.

    Exact for M/M/c and M/G/1; for other cases an approximation, usually within ~10% for moderate
    variability and utilisation, worse for very high variability (large cs^2) or light load.
    """
    m = mmc(servers, rate_rps, mean_service_s)
    return m.mean_wait_s * (arrival_scv + service_scv) / 2
