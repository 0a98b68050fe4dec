"""One test of "the balancer picks uniformly at random", shared by every balancer's tests.

The kernel's picks (iptables' statistic match, nftables' numgen, eBPF's prandom) are not
seeded, so a chi-square test fails by chance at the rate of its threshold. At p > 0.001 the
four balancers' tests (dnat's twice, once per relay) failed a CI run about one time in 170.
The threshold 1e-6 keeps that to about one in 170,000 while still catching the defects that
matter: a 1/2, 1/4, 1/4 split, the classic misordered-probability mistake in iptables'
cascade, gives p near 1e-55 on 2,000 connections, and even a 40/30/30 split on 3,000 gives
p near 1e-13 (tests/test_uniform_helper.py checks both).
"""

from __future__ import annotations

from collections.abc import Mapping

from scipy.stats import chisquare

P_FLOOR = 1e-6


def uniformity_p(counts: Mapping[str, int]) -> float:
    return float(chisquare(list(counts.values())).pvalue)


def assert_uniform(counts: Mapping[str, int]) -> None:
    p = uniformity_p(counts)
    assert p > P_FLOOR, f"picks not uniform (chi-square p={p:.2g} <= {P_FLOOR}): {dict(counts)}"
