from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from lbbench.load.schedule import build_schedule, expected_requests, requested_rate, worker_share
from lbbench.load.spec import LoadSpec
from lbbench.model.addresses import HostPort
from lbbench.model.load import ConnectionMode, RateStep

TARGET = HostPort("127.0.0.1", 8080)


def spec(**kw: object) -> LoadSpec:
    return LoadSpec(TARGET, **kw)  # type: ignore[arg-type]


def test_same_seed_same_schedule_across_runs_and_front_ends() -> None:
    a = build_schedule(spec(rate_rps=500, duration_s=8, seed=7))
    b = build_schedule(spec(rate_rps=500, duration_s=8, seed=7))
    # another front end: other target, path, connection mode; the arrivals must not change
    c = build_schedule(LoadSpec(HostPort("127.9.9.9", 80), path="/x", rate_rps=500, duration_s=8, seed=7,
                                connections=ConnectionMode.parse("keepalive:4"), workers=2))
    assert np.array_equal(a, b)
    assert np.array_equal(a, c)
    assert not np.array_equal(a, build_schedule(spec(rate_rps=500, duration_s=8, seed=8)))


def test_poisson_schedule_has_exactly_the_requested_count_sorted_within_the_run() -> None:
    s = build_schedule(spec(rate_rps=500, duration_s=8))
    assert len(s) == 4000 == expected_requests(spec(rate_rps=500, duration_s=8))
    assert np.all(np.diff(s) >= 0)
    assert s[0] >= 0 and s[-1] < 8


def test_poisson_gaps_are_exponential() -> None:
    rate = 1000.0
    s = build_schedule(spec(rate_rps=rate, duration_s=20, seed=3))
    gaps = np.diff(s)
    assert stats.kstest(gaps, "expon", args=(0, 1 / rate)).pvalue > 0.001
    # and the arrival counts per 100 ms window are Poisson-dispersed (variance ~ mean), not even
    counts = np.histogram(s, bins=np.arange(0, 20.001, 0.1))[0]
    assert 0.7 < counts.var() / counts.mean() < 1.3


def test_the_goodness_of_fit_test_rejects_even_spacing() -> None:
    """The KS check above can fail: it rejects a constant-rate schedule and a wrong rate."""
    even = np.diff(build_schedule(spec(rate_rps=1000, duration_s=20, arrivals="constant")))
    assert stats.kstest(even, "expon", args=(0, 1e-3)).pvalue < 1e-6
    poisson = np.diff(build_schedule(spec(rate_rps=1000, duration_s=20)))
    assert stats.kstest(poisson, "expon", args=(0, 1 / 1100)).pvalue < 1e-6


def test_constant_arrivals_are_evenly_spaced() -> None:
    s = build_schedule(spec(rate_rps=250, duration_s=2, arrivals="constant"))
    assert len(s) == 500
    assert np.allclose(np.diff(s), 1 / 250)
    assert s[0] == 0.0


def test_steps_and_ramps_shape_the_rate() -> None:
    stepped = spec(rate_rps=100, duration_s=10, steps=(RateStep(5, 300),))
    s = build_schedule(stepped)
    assert len(s) == 100 * 5 + 300 * 5
    assert abs(np.count_nonzero(s < 5) - 500) < 4 * np.sqrt(500)
    assert requested_rate(stepped) == pytest.approx(200)
    # a ramp from 0 to 400 rps over 10 s: a quarter of the requests in the first half
    ramp = build_schedule(spec(rate_rps=0.0001, duration_s=10, arrivals="constant",
                               steps=(RateStep(10, 400, ramp=True),)))
    assert len(ramp) == 2000
    assert abs(np.count_nonzero(ramp < 5) - 500) <= 1
    gaps = np.diff(ramp)
    assert gaps[0] > gaps[len(gaps) // 2] > gaps[-1]  # getting denser


def test_a_step_to_zero_pauses_the_load() -> None:
    s = build_schedule(spec(rate_rps=200, duration_s=6, steps=(RateStep(2, 0), RateStep(4, 200))))
    assert len(s) == 800
    assert not np.any((s > 2) & (s < 4))


def test_workers_share_the_one_schedule() -> None:
    s = build_schedule(spec(rate_rps=300, duration_s=3))
    shares = [worker_share(s, i, 3) for i in range(3)]
    assert sum(len(x) for x in shares) == len(s)
    assert np.array_equal(np.sort(np.concatenate(shares)), s)


def test_closed_loop_has_no_schedule() -> None:
    assert len(build_schedule(spec(closed_loop_users=4))) == 0


@settings(max_examples=40, deadline=None)
@given(
    rate=st.floats(1, 5000),
    duration=st.floats(0.1, 20),
    steps=st.lists(st.tuples(st.floats(0.01, 30), st.floats(0, 3000), st.booleans()), max_size=4),
    constant=st.booleans(),
)
def test_any_profile_gives_a_sorted_schedule_of_the_right_size(
    rate: float, duration: float, steps: list[tuple[float, float, bool]], constant: bool
) -> None:
    ats = sorted({round(a, 3) for a, _, _ in steps})
    rs = tuple(RateStep(a, r, ramp) for a, (_, r, ramp) in zip(ats, steps, strict=False))
    sp = spec(rate_rps=rate, duration_s=duration, steps=rs, arrivals="constant" if constant else "poisson")
    s = build_schedule(sp)
    assert len(s) == expected_requests(sp)
    assert np.all(np.diff(s) >= 0)
    if len(s):
        assert s[0] >= 0 and s[-1] <= duration


def test_bad_specs_are_refused() -> None:
    with pytest.raises(ValueError, match=r"127\.0\.0\.0/8"):
        LoadSpec(HostPort("10.0.0.1", 80))
    with pytest.raises(ValueError, match="rate_rps"):
        spec(rate_rps=0)
    with pytest.raises(ValueError, match="increasing"):
        spec(steps=(RateStep(5, 10), RateStep(2, 10)))
    with pytest.raises(ValueError, match="keepalive:K"):
        ConnectionMode.parse("keepalive:0")
    assert ConnectionMode.parse("keepalive:4") == ConnectionMode("keepalive", 4)
    assert str(ConnectionMode.parse("close")) == "close"


def test_spec_round_trips_through_a_dict() -> None:
    sp = spec(rate_rps=321, steps=(RateStep(1, 2, True),), connections=ConnectionMode("keepalive", 3),
              host_header="web:80", seed=5)
    assert LoadSpec.from_dict(sp.to_dict()) == sp
