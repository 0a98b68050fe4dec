"""The uniformity check the balancer tests share must reject the biases it exists to catch."""

from __future__ import annotations

import random

import pytest
from helpers.uniform import assert_uniform


def test_rejects_a_misordered_cascade() -> None:
    with pytest.raises(AssertionError, match="not uniform"):
        assert_uniform({"a": 1000, "b": 500, "c": 500})


def test_rejects_a_forty_thirty_thirty_split() -> None:
    with pytest.raises(AssertionError, match="not uniform"):
        assert_uniform({"a": 1200, "b": 900, "c": 900})


def test_accepts_seeded_uniform_picks() -> None:
    rng = random.Random(7)
    counts = {k: 0 for k in "abcd"}
    for _ in range(2000):
        counts[rng.choice("abcd")] += 1
    assert_uniform(counts)
