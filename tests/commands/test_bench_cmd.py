"""`lbbench bench`: the suite as a user runs it (tiny durations), its skips, its arithmetic."""

from __future__ import annotations

import asyncio
import json
import math
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from lbbench.bench import generator as gen
from lbbench.bench.peers import ClientSettings, StaticNginx, Wrk, parse_wrk_report, wrk_unavailable_reason
from lbbench.bench.stats import paired_ratio, stat
from lbbench.bench.suite import GROUPS, RPS_RATIOS, SCHEMA, BenchSettings
from lbbench.bench.throughput import L4_PEERS, L7_PEERS, http_ok, skip_reason
from lbbench.cli import main
from lbbench.load import head
from lbbench.model.addresses import HostPort
from lbbench.system.compiled import build_label, proxy_heads_label, relay_label
from lbbench.system.netns import netns_unavailable_reason
from lbbench.system.procs import Supervisor, lbbench_argv

STAT_KEYS = {"median", "min", "max", "n", "spread_pct", "values"}
RATIOS = {"dnat_vs_haproxy_tcp", "l7_vs_haproxy_http", "l7_vs_nginx", "generator_vs_wrk",
          "generator_closed_loop_vs_wrk", "generator_close_vs_wrk_close", "cpu_per_10k_vs_haproxy"}


def run_bench(args: list[str], env: dict[str, str] | None = None, timeout_s: float = 110) -> tuple[int, str, str]:
    with Supervisor() as sup:
        child = sup.spawn("bench", lbbench_argv("bench", *args), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, env=env)
        out, err = child.popen.communicate(timeout=timeout_s)
    return child.popen.returncode, out.decode(), err.decode()


def assert_stat(s: Any, where: str) -> None:
    assert isinstance(s, dict) and s.keys() >= STAT_KEYS, f"{where}: not a Stat: {s!r}"
    assert s["min"] <= s["median"] <= s["max"] and s["n"] == len(s["values"]) >= 1, where
    assert all(math.isfinite(v) for v in s["values"]), where


def assert_peers(group: dict[str, Any], names: tuple[str, ...], where: str) -> list[str]:
    """Every peer is there, measured or skipped with a reason; returns the measured ones."""
    assert list(group["peers"]) == list(names), where
    measured = []
    for name, p in group["peers"].items():
        if p["status"] == "skipped":
            assert p["reason"].strip(), f"{where}/{name}: skipped without a reason"
            continue
        assert p["status"] == "ok", f"{where}/{name}"
        assert_stat(p["rps"], f"{where}/{name}.rps")
        assert p["rps"]["median"] > 0 and p["requests"] > 0, f"{where}/{name}: no requests got through"
        measured.append(name)
    return measured


# -- end to end ---------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.timeout(300)  # every group, the L4 peers twice; a busy 2-core machine needs more than the default
def test_bench_runs_and_writes_bench_json(tmp_path: Path) -> None:
    """Every group with tiny durations: bench.json has every figure, ratio and skip reason; a PNG."""
    for why in (wrk_unavailable_reason(), StaticNginx.unavailable_reason()):
        if why is not None:
            pytest.skip(f"the client groups need it: {why}")  # test_missing_tools_* covers that case
    out = tmp_path / "bench"
    rc, stdout, stderr = run_bench(["--duration", "500ms", "--repeats", "1", "--out", str(out), "--json"],
                                  timeout_s=240)  # every group, l4 twice (keep-alive, Connection: close)
    assert rc == 0, stderr[-2000:]
    doc = json.loads((out / "bench.json").read_text())
    assert json.loads(stdout) == doc  # --json prints the very document it wrote
    assert (out / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert doc["schema"] == SCHEMA and doc["settings"]["repeats"] == 1 and doc["settings"]["duration_s"] == 0.5
    assert set(doc["groups"]) == {*GROUPS, "l4_close"}  # l4 twice: keep-alive, and Connection: close
    m = doc["machine"]
    assert m["cpu_count"] >= 1 and len(m["load_avg_start"]) == 3 and len(m["load_avg_end"]) == 3
    assert m["in_private_netns"] is (netns_unavailable_reason() is None)
    assert {"wrk", "haproxy", "nginx"} <= m["tools"].keys()
    assert m["lbbench_build"] == build_label()  # "pure Python" from the checkout's sources
    assert m["dnat_relay"] == relay_label()  # "native relay" where the engine is built in place
    assert m["response_scan"] == ("C response scan" if head.NATIVE else "httptools")
    assert m["proxy_heads"] == proxy_heads_label()  # "C proxy head scan" where _heads.c is built

    l4 = assert_peers(doc["groups"]["l4"], L4_PEERS, "l4")
    close = assert_peers(doc["groups"]["l4_close"], L4_PEERS, "l4_close")
    if m["in_private_netns"] and shutil.which("ip", path="/usr/sbin:/usr/bin:/sbin:/bin"):
        peers = doc["groups"]["l4_close"]["peers"]
        sources = [peers[n]["client_source"] for n in close if n != "ebpf-socketlb"]
        assert None not in sources and len(set(sources)) == len(sources)  # each peer's client its own source
        if "ebpf-socketlb" in close and "direct" in close:  # it connects to the pod itself, as direct does
            assert peers["ebpf-socketlb"]["client_source"] == peers["direct"]["client_source"]
    assert "ebpf-socketlb" in L4_PEERS  # measured, or skipped with the reason (not root, no libbpf, ...)
    l7 = assert_peers(doc["groups"]["l7"], L7_PEERS, "l7")
    assert "direct" in l4 and "direct" in l7 and "userspace-dnat" in l4 and "l7-proxy" in l7
    for name in ("userspace-dnat", "l7-proxy"):
        layer = "l4" if name in l4 else "l7"
        assert_stat(doc["groups"][layer]["peers"][name]["frontend_cpu_s_per_10k"], f"{name} cpu")
    assert doc["groups"]["l4"]["peers"]["direct"]["frontend_cpu_s_per_10k"] is None  # no front end: no cost
    assert doc["groups"]["l4"]["peers"]["userspace-dnat"]["processes"][0]["threads"] >= 1
    cost = doc["groups"]["cost"]["peers"]
    assert {"userspace-dnat", "l7-proxy"} <= cost.keys()

    g = doc["groups"]["generator"]["peers"]
    assert g["wrk"]["rps"]["median"] > 0 and g["lbbench"]["probes"] and g["lbbench"]["probes"][0]
    for probe in g["lbbench"]["probes"][0]:
        assert probe["passed"] == (probe["why"] == "")

    scale = doc["groups"]["scale"]
    assert scale["figures"]["pod_start"]["pods_per_s"]["median"] > 0
    assert "endpoint_sync_64_pods/userspace-dnat" in scale["figures"]
    kernel = ("endpoint_sync_64_pods/kernel-nftables", "nft_apply_1000_services")
    for key in kernel:  # measured, or skipped with the reason
        assert key in scale["figures"] or scale["skipped"][key].strip()

    assert doc["ratios"].keys() >= RATIOS
    for name in RPS_RATIOS:
        r = doc["ratios"][name]
        if r is None:
            assert doc["ratio_notes"][name].strip(), name
        else:
            assert_stat(r, name)
    assert_stat(doc["ratios"]["generator_vs_wrk"], "generator_vs_wrk")
    assert g["lbbench-closed-loop"]["rps"]["median"] > 0
    assert_stat(doc["ratios"]["generator_closed_loop_vs_wrk"], "generator_closed_loop_vs_wrk")
    # a new connection per request: wrk with Connection: close against the close-mode search, paired
    assert g["wrk-close"]["rps"]["median"] > 0 and g["lbbench-close"]["probes"][0]
    assert g["lbbench-close"]["rps"]["median"] > 0  # its first probe, 2k req/s, is within its reach
    assert_stat(doc["ratios"]["generator_close_vs_wrk_close"], "generator_close_vs_wrk_close")
    for s in doc["skipped"]:
        assert s["reason"].strip() and s["group"] in (*GROUPS, "l4_close", "l4/l4_close/l7")
    assert any("repeat" in w for w in doc["warnings"])  # one repeat: says the spread means nothing


@pytest.mark.slow
def test_missing_tools_are_skipped_with_reasons(tmp_path: Path) -> None:
    """No wrk, no unshare on PATH: the client groups and the kernel figures are skipped, the rest measured."""
    out = tmp_path / "bench"
    env = {"PATH": str(tmp_path / "empty-bin")}  # nothing there; the interpreter is called by its full path
    rc, _, stderr = run_bench(["--duration", "300ms", "--repeats", "1", "--only", "l4,generator,scale", "--out",
                               str(out)], env={**os.environ, **env})
    assert rc == 0, stderr[-2000:]
    doc = json.loads((out / "bench.json").read_text())
    skipped = {(s["group"], s["what"]): s["reason"] for s in doc["skipped"]}
    assert "wrk not installed" in skipped[("l4", "all")]
    assert "wrk not installed" in skipped[("generator", "all")]
    assert "generator" not in doc["groups"] and "l4" not in doc["groups"]
    scale = doc["groups"]["scale"]
    assert scale["figures"]["endpoint_sync_64_pods/userspace-dnat"]["seconds"]["median"] > 0
    assert "namespace" in scale["skipped"]["endpoint_sync_64_pods/kernel-nftables"]
    assert scale["skipped"]["nft_apply_1000_services"].strip()
    assert doc["ratios"]["dnat_vs_haproxy_tcp"] is None and "l4" in doc["ratio_notes"]["dnat_vs_haproxy_tcp"]


# -- the command line ---------------------------------------------------------------------------------
@pytest.mark.parametrize(("args", "message"), [
    (["--repeats", "0"], "repeats must be >= 1"),
    (["--only", "l4,bogus"], "unknown group 'bogus'"),
    (["--duration", "fast"], "--duration"),
    (["--duration", "0s"], "duration must be > 0"),
    (["--connections", "0"], "--connections must be >= 1"),
])
def test_bad_options_are_one_line_errors(args: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_settings_groups_and_layers() -> None:
    assert BenchSettings(groups=("cost",)).layers == ("l4", "l4_close", "l7")  # cost is derived from them
    assert BenchSettings(groups=("l4",)).layers == ("l4", "l4_close")  # keep-alive, then Connection: close
    assert BenchSettings(groups=("scale",)).layers == ()
    assert BenchSettings(duration_s=0.5).warmup_s == 0.25


def test_unknown_front_end_has_a_reason() -> None:
    assert "unknown front end" in (skip_reason("no-such-proxy") or "")


# -- arithmetic ---------------------------------------------------------------------------------------
def test_stat_and_paired_ratio() -> None:
    s = stat([3.0, 1.0, 2.0])
    assert (s["median"], s["min"], s["max"], s["n"]) == (2.0, 1.0, 3.0, 3)
    assert s["spread_pct"] == 100.0 and s["values"] == [3.0, 1.0, 2.0]  # rounds kept in order
    r = paired_ratio([10.0, 20.0, 30.0], [10.0, 10.0, 0.0])  # the round with a zero denominator is left out
    assert r is not None and r["values"] == [1.0, 2.0]
    assert paired_ratio([1.0], [0.0]) is None
    with pytest.raises(ValueError):
        stat([])
    with pytest.raises(ValueError):
        stat([math.nan])


def test_wrk_report_is_parsed_and_target_must_be_loopback(tmp_path: Path) -> None:
    text = ("Running 1s test\n  1 threads\n"
            '{"requests": 5000, "duration_us": 500000, "connect": 0, "read": 2, "write": 0, "status": 3, '
            '"timeout": 0, "p50_us": 120, "p99_us": 2500, "max_us": 9000}\n')
    r = parse_wrk_report(text)
    assert r.rps == 10_000 and r.p50_ms == 0.12 and r.p99_ms == 2.5 and r.errors == {"read": 2, "status": 3}
    with pytest.raises(RuntimeError, match="no report"):
        parse_wrk_report("unable to connect to 127.0.0.1:1 Connection refused\n")
    if (why := skip_reason("userspace-dnat")) is not None:
        pytest.skip(why)
    with Supervisor() as sup:
        try:
            wrk = Wrk(sup, tmp_path, ClientSettings())
        except RuntimeError as e:
            pytest.skip(str(e))
        argv = wrk.argv(HostPort("127.0.0.1", 80), "web.bench", 0.5)
        assert "-c16" in argv and "-t1" in argv and "Host: web.bench" in argv and argv[-1] == "http://127.0.0.1:80/"
        assert "Connection: close" not in argv
        with pytest.raises(ValueError, match="loopback"):
            wrk.argv(HostPort("10.0.0.1", 80), None, 1)
        close = Wrk(sup, tmp_path, ClientSettings(keepalive=False)).argv(HostPort("127.0.0.1", 80), None, 0.5)
        assert close[close.index("Connection: close") - 1] == "-H"  # wrk reconnects for every request


def test_http_ok_reports_what_answered() -> None:
    why = asyncio.run(http_ok(HostPort("127.0.0.1", 1), None, timeout_s=0.5))
    assert why is not None and why.startswith("connect")


# -- the generator's rate search ----------------------------------------------------------------------
def _probe_with_capacity(capacity: float, calls: list[float]) -> gen.ProbeFn:
    """A generator that keeps up exactly below `capacity` (the search logic alone, no processes)."""
    async def probe(rate: float) -> gen.Probe:
        calls.append(rate)
        late = 0.0005 if rate <= capacity else 0.008
        return gen.judge(rate, rate, 1000, 1000, late)
    return probe


def search(probe: gen.ProbeFn, start: float, factor: float, budget: int, cap: float) -> tuple[float, list[gen.Probe]]:
    return asyncio.run(gen.search_max_rate(probe, start, factor, budget, cap))


@pytest.mark.parametrize("capacity", [900.0, 3000.0, 7777.0, 40_000.0])
def test_rate_search_brackets_the_capacity(capacity: float) -> None:
    calls: list[float] = []
    best, probes = search(_probe_with_capacity(capacity, calls), 3000, 2.0, 12, 1e6)
    assert len(probes) == len(calls) <= 12
    assert best <= capacity and best >= capacity / gen.PRECISION  # within 10% below the truth
    assert all(p.passed == (p.rate_rps <= capacity) for p in probes)


def test_rate_search_is_bounded() -> None:
    calls: list[float] = []
    best, probes = search(_probe_with_capacity(1e9, calls), 1000, 2.0, 30, 5000)
    assert best == 5000 and max(calls) == 5000  # never above the cap, stops there
    calls.clear()
    best, probes = search(_probe_with_capacity(0.0, calls), 1000, 2.0, 3, 5000)
    assert best == 0.0 and len(probes) == 3  # nothing passes: the budget ends the search


def test_later_rounds_narrow_the_bracket() -> None:
    """The first round starts at half of wrk's 230k and bisects down to within 10% of the truth; each
    later one starts at the last answer and bisects what its 20% step brackets, to within 10%, in at
    most 5 probes."""
    calls: list[float] = []

    async def wrk() -> tuple[float, float]:
        return 230_000.0, 1.0

    async def closed() -> float:
        return 150_000.0

    run = asyncio.run(gen.run_rounds(wrk, _probe_with_capacity(110_000.0, calls), closed, 3, lambda _: None))
    assert calls[0] == 115_000.0 and len(run.probes[0]) <= 7
    assert all(110_000.0 / gen.PRECISION <= best <= 110_000.0 for best in run.lbbench_rps)
    assert all(len(probes) <= 5 for probes in run.probes[1:])


def test_close_mode_rounds_search_from_their_own_start_against_wrk_close() -> None:
    """With close sides, every round also measures wrk with Connection: close and searches lbbench's
    close-mode maximum, from half of wrk close's rate (not wrk's keep-alive one), capped by it."""
    keepalive_calls: list[float] = []
    close_calls: list[float] = []

    async def wrk() -> tuple[float, float]:
        return 230_000.0, 1.0

    async def closed() -> float:
        return 150_000.0

    async def wrk_close() -> float:
        return 20_000.0

    close = gen.CloseSides(wrk_close, _probe_with_capacity(5_000.0, close_calls))
    run = asyncio.run(gen.run_rounds(wrk, _probe_with_capacity(110_000.0, keepalive_calls), closed, 2,
                                     lambda _: None, close))
    assert close_calls[0] == 10_000.0 and keepalive_calls[0] == 115_000.0  # half of wrk's, each its own wrk
    assert run.wrk_close_rps == [20_000.0, 20_000.0] and len(run.close_probes) == 2
    assert all(best <= 5_000.0 for best in run.close_rps) and run.close_rps[-1] >= 5_000.0 / gen.PRECISION
    assert max(close_calls) <= 3 * 20_000.0


def test_judge_names_every_reason() -> None:
    p = gen.judge(1000, 900, 1000, 950, 0.003)
    assert not p.passed and "lateness p99 3.00 ms" in p.why and "95.0%" in p.why and "achieved 900" in p.why
    assert gen.judge(1000, 990, 1000, 1000, 0.001).passed
    assert not gen.judge(1000, 1000, 1000, 1000, None).passed
    # on time, but the client left answers unread while requests waited for their connections
    slow_reader = gen.judge(1000, 1000, 1000, 1000, 0.001, gen.Waits(own_p99_s=0.040, total_p99_s=0.045))
    assert not slow_reader.passed and slow_reader.why == "its own wait for a connection p99 40.00 ms >= 2 ms"
    assert not gen.judge(1000, 1000, 1000, 1000, 0.001, gen.Waits(own_p99_s=math.nan)).passed
    # the target stalled: requests waited for its answers, not for the client; drained while sending
    stalled = gen.judge(1000, 1000, 1000, 1000, 0.001, gen.Waits(0.0001, 0.040, ok_while_sending=998))
    assert stalled.passed and stalled.pool_wait_p99_ms == pytest.approx(40.0)
    # everything on time and answered, but a third only after the schedule: a backlog, not a sustained rate
    backlog = gen.judge(1000, 1000, 1000, 1000, 0.001, gen.Waits(0.0001, 0.600, ok_while_sending=700))
    assert not backlog.passed and backlog.why == "only 70.0% answered while the schedule ran (a backlog)"


def test_the_machine_line_says_which_build_and_relay_ran() -> None:
    import io

    from rich.console import Console

    from lbbench.bench.output import print_report

    doc = {"groups": {}, "skipped": [], "warnings": [], "wall_s": 70.0,
           "machine": {"cpu_count": 2, "cpu_model": "x", "load_avg_start": [0.1], "load_avg_end": [1.0],
                       "lbbench_build": "pure Python", "dnat_relay": "native relay"}}
    out = io.StringIO()
    print_report(doc, Console(file=out, width=200))
    assert "70 s, lbbench pure Python, native relay" in out.getvalue()
