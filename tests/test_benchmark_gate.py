"""The micro-benchmark regression gate runs with the test suite, and catches a 2x slowdown.

`tests/benchmarks/run_gate.py` runs every micro-benchmark (pytest-benchmark enabled),
writes the CI artifact `results/benchmarks-ci.json`, and compares it with the committed
baseline `results/baseline/benchmarks.json` (normalised by a calibration benchmark, 1.6x
threshold). The second test shows that a deliberately slowed hot path fails the gate: the
test-only hook ``LBBENCH_BENCH_SLOWDOWN=NAME=2`` (tests/benchmarks/slowdown.py) runs that
benchmark's function twice per call.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lbbench.system.procs import Supervisor

ROOT = Path(__file__).resolve().parent.parent
GATE = ROOT / "tests" / "benchmarks" / "run_gate.py"
BASELINE = ROOT / "results" / "baseline" / "benchmarks.json"
ARTIFACT = ROOT / "results" / "benchmarks-ci.json"

sys.path.insert(0, str(ROOT / "tests" / "benchmarks"))
import compare_baseline  # noqa: E402
from slowdown import parse_slowdown  # noqa: E402


def run_gate(args: list[str], env: dict[str, str] | None = None, timeout_s: float = 100) -> tuple[int, str]:
    with Supervisor() as sup:
        child = sup.spawn("gate", [sys.executable, str(GATE), *args], stdin=subprocess.DEVNULL,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, cwd=str(ROOT))
        out, _ = child.popen.communicate(timeout=timeout_s)
    return child.popen.returncode, out.decode(errors="replace")


def baseline_names() -> list[str]:
    return sorted(json.loads(BASELINE.read_text())["benchmarks"])


@pytest.mark.slow
def test_gate_passes_and_keeps_the_ci_artifact() -> None:
    rc, out = run_gate([])
    assert rc == 0, out[-4000:]
    assert "benchmark gate: passed" in out
    measured = {b["fullname"] for b in json.loads(ARTIFACT.read_text())["benchmarks"]}
    # every hot-path file is in the gate, and everything the baseline knows was measured
    for part in ("test_bench_dnat.py", "test_bench_load.py", "test_bench_proxy.py", "test_bench_calibration.py"):
        assert any(part in m for m in measured), part
    assert set(baseline_names()) <= measured


@pytest.mark.slow
def test_gate_fails_on_a_deliberate_2x_slowdown(tmp_path: Path) -> None:
    # A CPU-bound hot path: it slows down with the calibration benchmark when the machine is busy, so the
    # normalised ratio stays near 2x. A socket round trip does not (kernel time), and under steal its
    # best-of-3 ratio was seen at 1.54x.
    name = "test_parse_one_response"
    assert any(n.endswith("::" + name) for n in baseline_names())
    env = {**os.environ, "LBBENCH_BENCH_SLOWDOWN": f"{name}=2"}
    rc, out = run_gate(["-k", name, "--json", str(tmp_path / "slow.json")], env=env)
    assert rc == 1, out[-4000:]
    line = next(ln for ln in out.splitlines() if ln.endswith("x)") and name in ln)
    assert "REGRESSION" in line and "benchmark gate: FAILED" in out


# -- the comparison itself ------------------------------------------------------------------------------
def _run_file(tmp_path: Path, name: str, times: dict[str, float]) -> Path:
    doc = {"benchmarks": [{"fullname": k, "stats": {"min": v}} for k, v in times.items()]}
    path = tmp_path / name
    path.write_text(json.dumps(doc))
    return path


CAL = "tests/benchmarks/test_bench_calibration.py::test_calibration"


def test_compare_normalises_by_the_calibration_and_flags_only_real_regressions(tmp_path: Path) -> None:
    base = _run_file(tmp_path, "a.json", {CAL: 1e-4, "x::fast": 1e-6, "x::slow": 1e-3, "x::gone": 1e-5})
    noisy = _run_file(tmp_path, "b.json", {CAL: 1e-4, "x::fast": 1.3e-6, "x::slow": 1e-3})
    baseline = tmp_path / "base.json"
    assert compare_baseline.main([str(base), "--write-baseline", str(baseline)]) == 0
    assert compare_baseline.main([str(noisy), "--baseline", str(baseline)]) == 0  # 1.3x: noise, passes
    # A machine twice as slow everywhere (calibration included) is not a regression ...
    slower = _run_file(tmp_path, "c.json", {CAL: 2e-4, "x::fast": 2e-6, "x::slow": 2e-3, "x::new": 1.0})
    assert compare_baseline.main([str(slower), "--baseline", str(baseline)]) == 0
    # ... but one hot path twice as slow is.
    regressed = _run_file(tmp_path, "d.json", {CAL: 1e-4, "x::fast": 1e-6, "x::slow": 2e-3})
    assert compare_baseline.main([str(regressed), "--baseline", str(baseline)]) == 1


def test_baseline_keeps_the_best_of_several_runs(tmp_path: Path) -> None:
    a = _run_file(tmp_path, "a.json", {CAL: 1e-4, "x::f": 3e-6})
    b = _run_file(tmp_path, "b.json", {CAL: 1e-4, "x::f": 2e-6})
    doc = compare_baseline.make_baseline([a, b])
    assert doc["benchmarks"] == {"x::f": pytest.approx(0.02)} and doc["runs"] == 2


def test_each_benchmark_is_divided_by_the_calibration_measured_around_it(tmp_path: Path) -> None:
    """A 2x slower hot path; the run's own test_calibration met a half-speed spell, the paired one did not."""
    baseline = tmp_path / "base.json"
    compare_baseline.main([str(_run_file(tmp_path, "a.json", {CAL: 1e-4, "x::f": 1e-6})),
                           "--write-baseline", str(baseline)])
    doc = {"benchmarks": [{"fullname": CAL, "stats": {"min": 2e-4}},
                          {"fullname": "x::f", "stats": {"min": 2e-6},
                           "extra_info": {compare_baseline.PAIRED_KEY: 1e-4}}]}
    run = tmp_path / "b.json"
    run.write_text(json.dumps(doc))
    assert compare_baseline.best_of([run]) == {"x::f": pytest.approx(0.02)}  # not 0.01: 1x
    assert compare_baseline.main([str(run), "--baseline", str(baseline)]) == 1


def test_a_run_whose_yardstick_met_a_slow_spell_is_not_judged(tmp_path: Path) -> None:
    """Interpreter code slowed 1.7x, C parsing not: that run's ratio (0.6) would hide a 2x regression."""
    def run(name: str, t: float, cal: float) -> Path:
        doc = {"benchmarks": [{"fullname": CAL, "stats": {"min": cal}},
                              {"fullname": "x::f", "stats": {"min": t},
                               "extra_info": {compare_baseline.PAIRED_KEY: cal}}]}
        path = tmp_path / name
        path.write_text(json.dumps(doc))
        return path

    normal, spell = run("a.json", 2e-6, 1e-4), run("b.json", 2e-6, 1.7e-4)
    assert compare_baseline.best_of([normal, spell]) == {"x::f": pytest.approx(0.02)}
    assert compare_baseline.best_of([spell]) == {"x::f": pytest.approx(2e-6 / 1.7e-4)}  # nothing better known
    # ... and a run whose only sample met a spell that the run's own yardstick escaped is measured again
    assert compare_baseline.measured_in_a_spell([normal, spell]) == []
    mixed = json.loads(spell.read_text())
    mixed["benchmarks"][0]["stats"]["min"] = 1e-4
    spell.write_text(json.dumps(mixed))
    assert compare_baseline.measured_in_a_spell([spell]) == ["x::f"]


def test_committed_baseline_is_readable() -> None:
    doc = json.loads(BASELINE.read_text())
    assert doc["schema"] == compare_baseline.SCHEMA and doc["benchmarks"]
    assert all(v > 0 for v in doc["benchmarks"].values())


def test_slowdown_hook_parsing() -> None:
    assert parse_slowdown("") is None
    assert parse_slowdown("test_parse=2") == ("test_parse", 2)
    for bad in ("test_parse", "=2", "test_parse=x", "test_parse=0"):
        with pytest.raises(ValueError):
            parse_slowdown(bad)
