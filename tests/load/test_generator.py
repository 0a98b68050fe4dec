"""The load generator end to end: worker processes, real pods, merged results."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time

import numpy as np
import psutil
import pytest
import uvloop

from lbbench.cluster.standalone import fresh_ip, start_pod
from lbbench.load.generator import LoadGenerator, LoadResult, Progress, resolve_workers, run_load
from lbbench.load.histogram import LogHistogram
from lbbench.load.schedule import build_schedule
from lbbench.load.spec import LoadSpec
from lbbench.load.summary import saturation
from lbbench.model.addresses import HostPort
from lbbench.model.load import ConnectionMode
from lbbench.system.procs import Supervisor, lbbench_argv


@pytest.fixture(autouse=True)
def _both_clients(load_client: str) -> str:
    """Every test here runs with each client (tests/load/conftest.py): the C engine and HttpClient."""
    return load_client


@pytest.fixture
def pod(supervisor: Supervisor) -> HostPort:
    return start_pod(supervisor, "fast", service="const:0ms", slots=8)[1]


def check_rows(res: LoadResult, spec: LoadSpec) -> None:
    rows = res.rows
    assert len(rows) == res.summary.completed
    assert np.allclose(rows.latency_s, rows.done_s - rows.intended_s)
    assert (rows.done_s >= rows.intended_s).all()
    assert (rows.sent_s >= rows.intended_s).all()  # never early


def test_500_rps_poisson_is_sent_on_schedule(pod: HostPort) -> None:
    spec = LoadSpec(pod, rate_rps=500, duration_s=3, seed=11)
    res = run_load(spec)
    s = res.summary
    check_rows(res, spec)
    assert s.requests == s.scheduled == 1500 and s.ok == 1500 and res.complete
    assert s.achieved_rps == pytest.approx(500, rel=0.05)  # 2% on a quiet machine; see the closing note
    assert s.requested_rps == 500 and s.mode == "open" and s.connections == "close"
    # the rows are the schedule, exactly
    assert np.allclose(np.sort(res.rows.intended_s.to_numpy()), build_schedule(spec), atol=1e-9)
    assert res.rows.new_conn.all() and res.rows.conn_id.is_unique
    assert set(res.rows.pod) == {"fast"} and set(res.rows.error) == {""}
    assert res.histogram.count == 1500
    assert res.histogram.quantile(0.5) == pytest.approx(res.rows.latency_s.median(), rel=0.02)


@pytest.mark.slow
def test_coordinated_omission_is_avoided_when_the_pod_freezes(supervisor: Supervisor) -> None:
    """SIGSTOP the pod for 1 s in the middle of 6 s at 200 rps: the queued requests' waits count."""
    child, addr = start_pod(supervisor, "frozen", service="const:0ms", slots=8)
    spec = LoadSpec(addr, rate_rps=200, duration_s=6, seed=2)

    async def go() -> LoadResult:
        gen = LoadGenerator(spec)
        start_at = time.monotonic() + 1.5
        await gen.start(start_at)
        await asyncio.sleep(start_at + 2.5 - time.monotonic())
        child.signal(signal.SIGSTOP)
        try:
            await asyncio.sleep(1.0)
        finally:
            child.signal(signal.SIGCONT)
        return await gen.result()

    res = uvloop.run(go())
    lat = res.summary.latency_s
    assert res.summary.ok == res.summary.requests == 1200
    assert lat["p90"] is not None and lat["p90"] >= 0.3
    assert lat["p99"] is not None and lat["p99"] >= 0.8
    # the requests intended during the freeze waited until it ended, each from its own intended time
    frozen = res.rows[(res.rows.intended_s > 2.6) & (res.rows.intended_s < 3.4)]
    assert ((frozen.done_s > 3.45) & (frozen.latency_s > 0.05)).mean() > 0.9


def test_workers_split_one_schedule_and_merge_exactly(pod: HostPort) -> None:
    spec = LoadSpec(pod, rate_rps=400, duration_s=2, workers=2, seed=5,
                    connections=ConnectionMode.parse("keepalive:3"))
    res = run_load(spec)
    check_rows(res, spec)
    rows = res.rows
    assert set(rows.worker) == {0, 1} and res.summary.workers == 2 and len(res.worker_cpu_s) == 2
    sched = build_schedule(spec)
    for w in (0, 1):  # worker w took every 2nd request, starting at w
        mine = np.sort(rows[rows.worker == w].intended_s.to_numpy())
        assert np.allclose(mine, sched[w::2], atol=1e-9)
    # keepalive:3 split 2 + 1 over the workers: three connections in all
    assert rows.conn_id.nunique() == 3 and rows.new_conn.sum() == 3
    assert res.histogram.count == res.summary.ok == 800
    # merged histogram = histogram of all rows
    whole = LogHistogram()
    whole.record_many(rows.latency_s.to_numpy())
    assert np.array_equal(whole.counts, res.histogram.counts)


def test_a_part_sends_its_share_of_the_one_schedule(pod: HostPort) -> None:
    """Part 1 of 3 (as one pod of a load Job), itself split over 2 workers."""
    spec = LoadSpec(pod, rate_rps=300, duration_s=1, workers=2, seed=9, part_index=1, part_count=3)
    t0 = time.time() + 4.0  # workers need ~1 s to start on a busy machine; a late start is warned about
    res = run_load(spec, start_at_unix=t0)
    mine = build_schedule(spec)[1::3]
    assert np.allclose(np.sort(res.rows.intended_s.to_numpy()), mine, atol=1e-9)
    s = res.summary
    assert s.part == "1/3" and s.scheduled == s.requests == len(mine) == 100
    assert s.requested_rps == pytest.approx(100) and set(res.rows.worker) == {0, 1}
    assert s.start_at_unix == pytest.approx(t0, abs=0.05)
    assert s.warnings == ()
    late = run_load(LoadSpec(pod, rate_rps=50, duration_s=0.2), start_at_unix=time.time() - 5)
    assert late.summary.ok == 10 and "after the requested start time" in late.summary.warnings[0]


def test_request_stop_ends_early_with_the_rows_so_far(pod: HostPort) -> None:
    spec = LoadSpec(pod, rate_rps=200, duration_s=20, path="/?delay=3s:5")

    async def go() -> tuple[LoadResult, list[Progress], float]:
        gen = LoadGenerator(spec)
        await gen.start(time.monotonic() + 1.5)
        seen = []
        for _ in range(6):
            await asyncio.sleep(0.5)
            seen.append(gen.progress())
        gen.request_stop()
        t0 = time.monotonic()
        res = await gen.result()
        return res, seen, time.monotonic() - t0

    res, seen, took = uvloop.run(go())
    s = res.summary
    assert took < spec.duration_s / 2  # it ended at the stop (after the 1 s grace), not at the configured end
    assert s.stopped and not res.complete and not s.complete
    assert 150 < s.requests < 800 and s.actual_duration_s < spec.duration_s / 2
    assert s.aborted > 0  # the 3 s delayed ones were cut off after the 1 s grace
    assert len(res.rows) == s.completed == s.requests - s.aborted
    assert seen[-1].issued > seen[0].issued and seen[-1].done > 0 and seen[-1].ok > 0, seen
    assert seen[-1].elapsed_s > 1, seen
    assert any(p.p99_last_s is not None for p in seen), seen


@pytest.mark.parametrize(("think_s", "per_user_rps"), [(0.01, 50), (0.0, 100)])
def test_closed_loop_never_has_more_than_n_requests_in_flight(supervisor: Supervisor, think_s: float,
                                                              per_user_rps: float) -> None:
    _, addr = start_pod(supervisor, "cl", service="const:10ms", slots=8)
    res = run_load(LoadSpec(addr, closed_loop_users=3, think_time_s=think_s, duration_s=2,
                            connections=ConnectionMode("keepalive", 3)))
    s = res.summary
    assert s.mode == "closed" and s.requested_rps is None and s.arrivals is None
    # each user: ~10 ms service + think time -> per_user_rps at most
    assert 30 < s.achieved_rps < 3 * per_user_rps * 1.1
    rows = res.rows
    events = np.concatenate([np.c_[rows.sent_s, np.ones(len(rows))], np.c_[rows.done_s, -np.ones(len(rows))]])
    events = events[np.lexsort((events[:, 1], events[:, 0]))]  # ends before starts at equal times
    assert np.cumsum(events[:, 1]).max() <= 3
    # a user's next request is intended `think_s` after its previous answer, and never sent before
    assert (rows.sent_s >= rows.intended_s).all() and s.lateness_s["p50"] is not None
    assert s.lateness_s["p50"] < 0.005 and rows.conn_id.nunique() == 3


def test_keepalive_open_loop_sends_every_request_on_time_never_early(pod: HostPort) -> None:
    """Bursts of due requests go out together; each from its own intended time, none before it."""
    spec = LoadSpec(pod, rate_rps=1000, duration_s=1.5, seed=5, connections=ConnectionMode("keepalive", 8))
    res = run_load(spec)
    s, rows = res.summary, res.rows
    check_rows(res, spec)
    assert s.requests == s.scheduled == 1500 and s.ok == 1500 and res.complete
    assert np.allclose(np.sort(rows.intended_s.to_numpy()), build_schedule(spec), atol=1e-9)
    assert rows.conn_id.nunique() == 8 and rows.new_conn.sum() == 8
    assert res.lateness.count == 1500 and res.lateness.min >= 0.0
    assert s.lateness_s["p50"] is not None and s.lateness_s["p50"] < 0.002  # tolerant of a busy machine


def test_sends_close_together_wait_on_the_loop_never_early(pod: HostPort) -> None:
    """At 8k req/s one gap in seven is under POLL_S: those sends wait on the event loop's turns
    instead of the timer, and go out on schedule, none early, none lost."""
    from lbbench.load.worker import POLL_S

    spec = LoadSpec(pod, rate_rps=8000, duration_s=1.0, seed=3, connections=ConnectionMode("keepalive", 16))
    gaps = np.diff(build_schedule(spec))
    assert (gaps < POLL_S).sum() > 800  # the poll path is what this test exercises
    res = run_load(spec)
    check_rows(res, spec)
    assert res.summary.requests == res.summary.scheduled == 8000 and res.complete
    assert np.allclose(np.sort(res.rows.intended_s.to_numpy()), build_schedule(spec), atol=1e-9)
    assert res.lateness.min >= 0.0 and res.summary.lateness_s["p50"] < 0.002


def test_polling_is_reported_and_counted_in_the_cpu_not_as_busy(pod: HostPort, load_client: str) -> None:
    """The native engine polls for sends due within 50 us: CPU the machine paid for (in worker_cpu_s,
    reported apart as worker_poll_cpu_s), but waiting, so not part of the busy fraction."""
    spec = LoadSpec(pod, rate_rps=8000, duration_s=1.5, seed=3, connections=ConnectionMode("keepalive", 16))
    s = run_load(spec).summary
    assert s.ok == s.scheduled and len(s.worker_poll_cpu_s) == len(s.worker_cpu_s) == 1
    poll, cpu, busy = s.worker_poll_cpu_s[0], s.worker_cpu_s[0], s.worker_cpu_fraction[0]
    if load_client == "python":
        assert poll == 0.0 and "polling" not in s.format_text()
    else:
        assert 0.0 < poll < cpu and "polling for the next send" in s.format_text()
        assert busy <= (cpu - poll) / 1.5 + 0.05  # the busy fraction leaves the polling out
    assert s.to_dict()["worker_poll_cpu_s"] == [poll]


def test_a_backlog_behind_a_slow_target_is_the_targets_wait_and_drains_after_the_schedule(
        supervisor: Supervisor, load_client: str) -> None:
    """100 req/s for 1 s over one keep-alive connection to a pod that serves one at a time in 20 ms (50/s):
    half the requests are answered only after the schedule ended (ok_while_sending says so), and they
    waited for the connection. The native client knows, by the kernel's receive stamps, that the wait was
    the target's (each answer was read as it arrived); the Python client cannot tell, so counts it its own."""
    addr = start_pod(supervisor, "slow", service="const:20ms", slots=1)[1]
    spec = LoadSpec(addr, rate_rps=100, duration_s=1.0, arrivals="constant", seed=1,
                    connections=ConnectionMode("keepalive", 1))
    s = run_load(spec).summary
    assert s.ok == s.scheduled == 100
    # at most 50 can be served in the 1 s window (fewer on a busy machine: 29 once in CI), the rest after it
    assert 0 < s.ok_while_sending <= 55
    assert "answered after the schedule ended" in s.format_text()
    wait, own = s.pool_wait_s, s.pool_wait_own_s
    assert wait is not None and own is not None and wait["p99"] is not None and wait["p99"] > 0.5
    if load_client == "python":
        assert own == wait
    else:
        assert own["p99"] is not None and own["p99"] < 0.1 * wait["p99"]
        assert "of which the client's own" in s.format_text()


def test_refused_target_is_all_errors_not_latency() -> None:
    with __import__("socket").socket() as s:
        s.bind((fresh_ip(), 0))
        addr = HostPort(*s.getsockname()[:2])
    res = run_load(LoadSpec(addr, rate_rps=100, duration_s=1))
    s2 = res.summary
    assert s2.errors["refused"] == s2.requests == 100 and s2.ok == 0
    assert s2.latency_s["p50"] is None and res.histogram.count == 0
    assert set(res.rows.error) == {"refused"}


def test_saturation_is_flagged(pod: HostPort) -> None:
    # an impossible lateness threshold: the generator must own up
    res = run_load(LoadSpec(pod, rate_rps=200, duration_s=1, lateness_threshold_s=1e-7))
    assert res.summary.generator_saturated
    assert res.summary.saturation_reason is not None and "lateness" in res.summary.saturation_reason
    assert "WARNING" in res.summary.format_text()
    # and the CPU rule
    h = LogHistogram()
    h.record(1e-5)
    assert saturation(h, (0.2, 0.95), 0.002) == "worker 1 used 95% CPU while sending (> 90%)"
    assert saturation(h, (0.2, 0.5), 0.002) is None


def test_without_rows_the_histograms_still_count(pod: HostPort) -> None:
    res = run_load(LoadSpec(pod, rate_rps=200, duration_s=1, record_rows=False))
    assert len(res.rows) == 0 and "latency_s" in res.rows.columns
    assert res.histogram.count == res.summary.ok == 200


def test_auto_workers() -> None:
    t = HostPort("127.0.0.1", 80)
    assert resolve_workers(LoadSpec(t, rate_rps=100), cpu_count=8) == 1
    assert resolve_workers(LoadSpec(t, rate_rps=1e6), cpu_count=8) == 8
    assert resolve_workers(LoadSpec(t, rate_rps=1e6, connections=ConnectionMode("keepalive", 2)), cpu_count=8) == 2
    assert resolve_workers(LoadSpec(t, closed_loop_users=2, workers=0), cpu_count=8) == 1
    with pytest.raises(ValueError, match="keep-alive"):
        resolve_workers(LoadSpec(t, workers=4, connections=ConnectionMode("keepalive", 2)))


def test_workers_die_with_the_parent(pod: HostPort) -> None:
    """SIGKILL `lbbench load` mid-run: its worker processes must not outlive it."""
    cli = subprocess.Popen(lbbench_argv("load", f"http://{pod}/", "--rate", "50", "--duration", "30s",
                                        "--workers", "2"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        workers: list[psutil.Process] = []
        while time.monotonic() < deadline:
            workers = [p for p in psutil.Process(cli.pid).children(recursive=True)
                       if "lbbench.load.worker" in " ".join(p.cmdline())]
            if len(workers) == 2:
                break
            time.sleep(0.1)
        assert len(workers) == 2
        time.sleep(0.5)
        cli.send_signal(signal.SIGKILL)
        cli.wait(5)
        _, alive = psutil.wait_procs(workers, timeout=5)
        assert alive == []
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.wait()
