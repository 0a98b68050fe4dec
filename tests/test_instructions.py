"""The instruction-count check of the hot paths passes on today's code and catches a 2x slowdown.

`tests/benchmarks/instructions.py` counts, under valgrind's callgrind, the user-space instructions
per request of the proxy, the forwarder and the load client (in-process micro-benchmarks), and
compares them with the committed baseline `results/baseline/instructions.json`. Counts, unlike
timings, repeat on a noisy machine, so the threshold can be tight.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lbbench.system.procs import Supervisor

ROOT = Path(__file__).resolve().parent.parent
CHECK = ROOT / "tests" / "benchmarks" / "instructions.py"
BASELINE = ROOT / "results" / "baseline" / "instructions.json"


def _net_of() -> dict[str, str]:
    """instructions.py's NET_OF: the counts taken net of a floor (the native engines', well under 1k)."""
    spec = importlib.util.spec_from_file_location("lbbench_instructions_check", CHECK)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    net_of: dict[str, str] = module.NET_OF
    return net_of


NET_OF = _net_of()

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("valgrind") is None, reason="valgrind is not installed (apt-get install valgrind)"),
    # the load client's baseline counts its C response scan; without it the client parses with httptools
    pytest.mark.skipif(importlib.util.find_spec("lbbench.load._scan") is None,
                       reason="lbbench/load/_scan.c is not built (pip install -e . with a C compiler)"),
]


def run_check(args: list[str], env: dict[str, str] | None = None) -> tuple[int, str]:
    with Supervisor() as sup:
        child = sup.spawn("instructions", [sys.executable, str(CHECK), *args], stdin=subprocess.DEVNULL,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, cwd=str(ROOT))
        out, _ = child.popen.communicate(timeout=600)
    return child.popen.returncode, out.decode(errors="replace")


def test_every_hot_path_is_within_its_baseline(tmp_path: Path) -> None:
    rc, out = run_check(["--json", str(tmp_path / "now.json")])
    assert rc == 0, out[-3000:]
    assert "instruction counts: passed" in out
    now = json.loads((tmp_path / "now.json").read_text())["instructions_per_call"]
    baseline = json.loads(BASELINE.read_text())["instructions_per_call"]
    assert set(now) == set(baseline)  # proxy, forwarder and client paths are all tracked
    # a real path was counted, not an empty bracket; the native engines' counts are net of their Python drivers'
    assert all(value > (300 if name in NET_OF else 1000) for name, value in now.items()), now


def test_a_deliberate_2x_slowdown_fails_the_check() -> None:
    name = "test_bench_request_through_the_proxy"
    env = {**os.environ, "LBBENCH_BENCH_SLOWDOWN": f"{name}=2"}
    rc, out = run_check(["-k", name], env=env)
    assert rc == 1, out[-3000:]
    line = next(ln for ln in out.splitlines() if ln.startswith(name))
    assert "REGRESSION" in line and "instruction counts: FAILED" in out
