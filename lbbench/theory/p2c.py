"""Power of d choices: Mitzenmacher's supermarket model (mean-field fixed point).

Assumptions: N -> infinity pods (the mean-field limit; at small N such as 4 the real system differs,
see the tests for how much), Poisson arrivals, exponential service, each request samples d pods
uniformly at random and joins the one with the fewest requests in it (ties at random), FCFS per pod
with `slots` parallel servers, no information delay (queue lengths are exact at decision time).

s_i is the fraction of pods with at least i requests. With one slot the fixed point is
s_i = rho^((d^i - 1)/(d - 1)) and the mean time in system is sum_{i>=1} rho^((d^i - d)/(d - 1))
service times (Mitzenmacher 2001, "The power of two choices in randomized load balancing").
With c slots the fixed point solves lambda*(s_{i-1}^d - s_i^d) = min(i, c)*mu*(s_i - s_{i+1}).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.optimize import brentq
from scipy.special import gammainc, gammaincc

from lbbench.theory.queues import _check_positive, _check_servers, _check_stable, _quantile

_TAIL_EPS = 1e-18  # stop the tail once s_i^d (the mass still to come) is below this
_MAX_LEVELS = 200_000


def _levels_below_c(log_sc: float, rho: float, c: int, d: int) -> np.ndarray:
    """log s_0..log s_c given log s_c, by the backward recurrence (stable, unlike the forward one)."""
    lam = c * rho  # arrivals per pod per unit service time
    log_s = np.empty(c + 1)
    log_s[c] = log_sc
    log_s[c - 1] = (math.log(c / lam) + log_sc) / d
    for i in range(c - 1, 0, -1):
        li, lnext = log_s[i], log_s[i + 1]
        # s_{i-1}^d = s_i^d + i*(s_i - s_{i+1})/lam, in logs so deep levels do not underflow.
        inner = math.exp((d - 1) * li) + i * -math.expm1(lnext - li) / lam
        log_s[i - 1] = (li + math.log(inner)) / d
    return log_s


def supermarket_tail(rho: float, slots: int, d: int = 2) -> np.ndarray:
    """s_0, s_1, ...: the fixed-point fraction of pods holding at least i requests (s_0 = 1).

    rho is the per-slot utilisation lambda / (N * slots * mu).
    """
    _check_servers(slots)
    _check_servers(d)
    if not (math.isfinite(rho) and rho > 0):
        raise ValueError(f"utilisation must be finite and > 0, got {rho!r}")
    _check_stable(rho)
    c = slots
    if c == 1:
        head = np.array([1.0, rho])
    else:
        # s_c is the one unknown: choose it so that the recurrence lands on s_0 = 1.
        def miss(x: float) -> float:
            return float(_levels_below_c(x, rho, c, d)[0])

        lo = math.log(rho) - 10
        while miss(lo) > 0:
            lo = 2 * lo
        head = np.exp(_levels_below_c(brentq(miss, lo, math.log(rho), xtol=1e-14, rtol=1e-15), rho, c, d))
    levels = list(head)
    # Above c every pod serves at full rate: lambda*s_{i-1}^d = c*mu*s_i, i.e. s_i = rho*s_{i-1}^d.
    while levels[-1] ** d > _TAIL_EPS and len(levels) < _MAX_LEVELS:
        levels.append(rho * levels[-1] ** d)
    return np.array(levels)


@dataclass(frozen=True)
class SupermarketResponse:
    """Response time of power-of-d under the mean-field fixed point.

    A request joins a pod holding i requests with probability w_i = s_i^d - s_{i+1}^d; with i < c
    it starts at once, else it waits for i - c + 1 departures at rate c*mu, then its own Exp(mu).
    """

    slots: int
    service_rate: float
    join_probs: tuple[float, ...]

    def _ahead(self) -> np.ndarray:
        """Departures each joining position must wait for (0 when a slot is free)."""
        return np.maximum(np.arange(len(self.join_probs)) - self.slots + 1, 0)

    @property
    def p_wait(self) -> float:
        return float(sum(self.join_probs[self.slots :]))

    @property
    def mean_wait_s(self) -> float:
        w = np.asarray(self.join_probs)
        return float(np.dot(w, self._ahead())) / (self.slots * self.service_rate)

    @property
    def mean_s(self) -> float:
        return self.mean_wait_s + 1 / self.service_rate

    def sf(self, t: float) -> float:
        """P(T > t): a mixture of Exp(mu) and Erlang(k, c*mu) + Exp(mu)."""
        if t <= 0:
            return 1.0
        w = np.asarray(self.join_probs)
        k = self._ahead()
        mu, c = self.service_rate, self.slots
        no_wait = float(w[k == 0].sum()) * math.exp(-mu * t)
        kw, ww = k[k > 0], w[k > 0]
        if c == 1:
            waited = gammaincc(kw + 1, mu * t)  # Erlang(k + 1, mu)
        else:
            # P(E_k + S > t) = P(E_k > t) + e^{-mu t} (c/(c-1))^k P(Gamma(k, (c-1) mu) <= t)
            lower = gammainc(kw, (c - 1) * mu * t)
            with np.errstate(divide="ignore"):
                log_term = -mu * t + kw * math.log(c / (c - 1)) + np.log(lower)
            waited = gammaincc(kw, c * mu * t) + np.exp(log_term)
        return min(1.0, no_wait + float(np.dot(ww, waited)))

    def quantile(self, q: float) -> float:
        return _quantile(self.sf, q, self.mean_s)


def power_of_d(slots: int, rate_per_pod_rps: float, mean_service_s: float, d: int = 2) -> SupermarketResponse:
    """Power-of-d (p2c for d=2) pods in the N -> infinity limit; see the module docstring."""
    _check_positive(rate_per_pod_rps=rate_per_pod_rps, mean_service_s=mean_service_s)
    mu = 1 / mean_service_s
    s = supermarket_tail(rate_per_pod_rps / (slots * mu), slots, d)
    sd = np.append(s**d, 0.0)
    return SupermarketResponse(slots=slots, service_rate=mu, join_probs=tuple(float(x) for x in sd[:-1] - sd[1:]))


def mitzenmacher_mean_service_times(rho: float, d: int = 2) -> float:
    """Mitzenmacher's closed form for one slot: E[T]*mu = sum_{i>=1} rho^((d^i - d)/(d - 1))."""
    _check_stable(rho)
    if d == 1:
        return 1 / (1 - rho)
    total, i = 0.0, 1
    while True:
        term = math.pow(rho, (d**i - d) / (d - 1))
        total += term
        if term < 1e-18:
            return total
        i += 1
