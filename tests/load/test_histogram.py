from __future__ import annotations

import json
import math

import numpy as np
import pytest

from lbbench.load.histogram import LogHistogram

QS = [0.0001, 0.001, 0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99, 0.999, 0.9999]


@pytest.fixture(scope="module")
def lognormal() -> np.ndarray:
    # median 2 ms with a heavy tail: what a loopback latency distribution looks like
    return np.random.default_rng(1).lognormal(mean=math.log(0.002), sigma=1.2, size=1_000_000)


def test_quantiles_within_one_percent_of_numpy_on_a_million_lognormal_samples(lognormal: np.ndarray) -> None:
    h = LogHistogram()
    h.record_many(lognormal)
    exact = np.percentile(lognormal, [q * 100 for q in QS])
    got = h.quantiles(QS)
    rel = np.abs(got - exact) / exact
    assert rel.max() <= 0.01, dict(zip(QS, rel, strict=True))
    assert h.count == 1_000_000
    assert h.max == lognormal.max() and h.min == lognormal.min()
    assert h.mean == pytest.approx(lognormal.mean(), rel=1e-9)
    assert h.quantile(0) == lognormal.min() and h.quantile(1) == lognormal.max()


def test_merging_is_exact(lognormal: np.ndarray) -> None:
    whole = LogHistogram()
    whole.record_many(lognormal)
    parts = []
    for chunk in np.array_split(lognormal, 4):
        p = LogHistogram()
        p.record_many(chunk)
        parts.append(p)
    merged = LogHistogram.merged(parts)
    assert np.array_equal(merged.counts, whole.counts)
    assert np.array_equal(merged.quantiles(QS), whole.quantiles(QS))
    assert (parts[0] + parts[1]).count == len(np.array_split(lognormal, 4)[0]) + len(np.array_split(lognormal, 4)[1])


def test_one_at_a_time_recording_matches_vectorised() -> None:
    values = np.random.default_rng(2).exponential(0.01, 20_000)
    a, b = LogHistogram(), LogHistogram()
    for v in values:
        a.record(float(v))
    b.record_many(values)
    assert np.array_equal(a.counts, b.counts)
    assert a.sum == pytest.approx(b.sum)


def test_sub_millisecond_values_keep_their_precision() -> None:
    """Unlike a 1 ms floor: 37 us stays 37 us."""
    h = LogHistogram()
    for _ in range(10):
        h.record(37e-6)
    h.record(80e-6)
    assert h.quantile(0.5) == pytest.approx(37e-6, rel=0.005)


def test_out_of_range_values_are_counted_not_lost() -> None:
    h = LogHistogram()
    h.record(0.0)
    h.record(-1e-4)  # a send a hair early, say
    h.record(1e6)
    assert h.count == 3
    assert h.quantile(0) == -1e-4 and h.quantile(1) == 1e6


def test_json_round_trip() -> None:
    h = LogHistogram()
    h.record_many(np.random.default_rng(3).uniform(1e-4, 1.0, 5000))
    back = LogHistogram.from_dict(json.loads(json.dumps(h.to_dict())))
    assert np.array_equal(back.counts, h.counts)
    assert (back.sum, back.min, back.max) == (h.sum, h.min, h.max)
    empty = LogHistogram.from_dict(LogHistogram().to_dict())
    assert empty.count == 0 and math.isnan(empty.quantile(0.5)) and math.isnan(empty.mean)


def test_different_layouts_refuse_to_merge() -> None:
    with pytest.raises(ValueError, match="layout"):
        LogHistogram().merge(LogHistogram(growth=1.02))
    with pytest.raises(ValueError):
        LogHistogram().quantile(1.5)


def test_recorder_bins_in_bulk_exactly_as_one_by_one_and_splits_intervals() -> None:
    """The recorder buffers values on the hot path and bins them when read: same counts."""
    from lbbench.load.client import Request
    from lbbench.load.recorder import Recorder

    rng = np.random.default_rng(4)
    rec = Recorder(start_at=100.0, record_rows=True)
    one_by_one = {"latency": LogHistogram(), "lateness": LogHistogram(), "pool_wait": LogHistogram()}
    intervals: list[tuple[LogHistogram, LogHistogram]] = []
    for i in range(3000):
        intended = 100.0 + i * 1e-3
        req = Request(intended, intended + float(rng.exponential(2e-5)), tag=-1)
        rec.on_issue(req)
        req.sent = req.issued + float(rng.exponential(1e-4))
        req.done = req.sent + float(rng.lognormal(math.log(1e-3), 1.0))
        req.status, req.error = (200, "") if i % 10 else (503, "http_5xx")
        rec.on_done(req)
        one_by_one["lateness"].record(req.issued - req.intended)
        one_by_one["pool_wait"].record(req.sent - req.issued)
        if not req.error:
            one_by_one["latency"].record(req.done - req.intended)
        if i % 1000 == 999:
            intervals.append(rec.take_interval())
    for name, h in one_by_one.items():
        got = getattr(rec, name)
        assert np.array_equal(got.counts, h.counts), name
        assert (got.min, got.max) == (h.min, h.max) and got.sum == pytest.approx(h.sum, rel=1e-12)
    assert [(lat.count, late.count) for lat, late in intervals] == [(900, 1000)] * 3
    merged = LogHistogram.merged(lat for lat, _ in intervals)
    assert np.array_equal(merged.counts, rec.latency.counts)
    assert rec.counters() == {"issued": 3000, "done": 3000, "ok": 2700, "ok_while_sending": 2700,
                              "errors": {"http_5xx": 300}}
    assert len(rec.columns()["intended_s"]) == 3000


def test_the_clients_own_connection_wait_starts_when_the_answer_arrived() -> None:
    """sent - max(issued, freed), both ways in: the native client's records and HttpClient's requests."""
    from lbbench.load.client import Request
    from lbbench.load.native import RECORD
    from lbbench.load.recorder import Recorder

    # (issued, freed, sent): freed unknown -> all the wait; before the issue -> all; after -> from it
    cases = [(10.0, math.nan, 10.5), (10.0, 9.0, 10.25), (10.0, 10.4, 10.5)]
    own = [0.5, 0.25, 0.1]
    recs = np.zeros(len(cases), dtype=RECORD)
    for rec, (issued, freed, sent) in zip(recs, cases, strict=True):
        rec["intended"], rec["issued"], rec["freed"], rec["sent"], rec["done"] = issued, issued, freed, sent, 11.0
        rec["status"] = 200
    bulk = Recorder(start_at=0.0, record_rows=False, window_s=10.9)
    bulk.on_records(recs, [""], [""])
    one = Recorder(start_at=0.0, record_rows=False, window_s=11.0)
    for issued, freed, sent in cases:
        req = Request(issued, issued, tag=-1)
        req.freed, req.sent, req.done, req.status = freed, sent, 11.0, 200
        one.on_done(req)
    for rec in (bulk, one):
        h = rec.pool_wait_own
        assert h.count == 3 and h.sum == pytest.approx(sum(own)) and h.max == pytest.approx(max(own))
        assert rec.pool_wait.sum == pytest.approx(0.5 + 0.25 + 0.5)
    assert (bulk.ok_while_sending, one.ok_while_sending) == (0, 3)  # done at 11.0: after 10.9, by 11.0
