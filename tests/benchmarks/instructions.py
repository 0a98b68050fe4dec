"""Instructions per request of lbbench's hot paths, counted by valgrind (callgrind): a figure that does
not drift with the machine's speed or a neighbour's load, so a regression check on it holds on a
noisy shared machine where timings do not.

    python tests/benchmarks/instructions.py [--json OUT] [--baseline results/baseline/instructions.json]
                                            [--threshold 1.25] [-k NAME] [--write-baseline PATH]

Each hot path is one of the in-process micro-benchmarks (stand-in transports, no sockets, no event
loop turns): the L7 proxy's request cycle, the forwarder's relay exchange, the load client's
request cycle and its response parser. The native relay's exchange is the exception: its engine is C
in a thread of its own, so it is driven over real loopback sockets from this thread, and counted net
of the same socket calls on a direct connection (NET_OF); callgrind counts every thread's instructions.
In a child process run under callgrind, each benchmark's
function is warmed up, then called N times between two calls of ``os.getppid()``; callgrind dumps
its counters before every call of that C function (``--dump-before``), so the part between two
dumps is exactly N calls' user-space instructions (Ir). Python's hash seed is fixed, so the count
repeats to within a fraction of a percent. Kernel work (syscalls) is not counted: this tracks
lbbench's own code, the part it can make cheaper.

The deliberate-slowdown hook of the timing gate works here too: ``LBBENCH_BENCH_SLOWDOWN=NAME=2``
runs that benchmark's function twice per call, and the check fails (tests/test_instructions.py).
Exit 0: within the threshold; 1: a regression; 2: valgrind or the benchmarks failed.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(HERE))

from slowdown import SLOWDOWN_ENV, parse_slowdown  # noqa: E402

BASELINE = ROOT / "results" / "baseline" / "instructions.json"
SCHEMA = "lbbench.instructions/1"
THRESHOLD = 1.25  # instruction counts repeat closely: a quarter more is a real regression
WARMUP = 50
CALLS = 400
# (module, test function): each hot path's in-process micro-benchmark
HOT_PATHS: tuple[tuple[str, str], ...] = (
    ("test_bench_proxy", "test_bench_request_through_the_proxy"),
    ("test_bench_proxy", "test_bench_wrk_request_nginx_response"),
    ("test_bench_dnat", "test_relay_exchange_in_process"),
    ("test_bench_dnat", "test_loopback_exchange_floor"),
    ("test_bench_dnat", "test_native_relay_exchange"),
    ("test_bench_load", "test_keepalive_request_cycle"),
    ("test_bench_load", "test_parse_one_response"),
    ("test_bench_load", "test_pod_end_floor"),
    ("test_bench_load", "test_native_client_exchange"),
)
# Counted net of another benchmark: the native relay's exchange drives real sockets from Python, whose
# ~11.9k instructions (the floor: the same calls on a direct connection) would hide the engine's ~0.65k.
NET_OF = {"test_native_relay_exchange": "test_loopback_exchange_floor",
          "test_native_client_exchange": "test_pod_end_floor"}


class CountingBenchmark:
    """Stands in for pytest-benchmark's fixture: warm up, then N calls between two markers."""

    def __init__(self, name: str, factor: int) -> None:
        self.name = name
        self.factor = factor
        self.extra_info: dict[str, Any] = {}

    def __call__(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        for _ in range(WARMUP):
            fn(*args, **kwargs)
        os.getppid()  # marker: callgrind dumps here
        for _ in range(CALLS):
            for _ in range(self.factor):
                result = fn(*args, **kwargs)
        os.getppid()  # marker
        return result


def child(selected: list[tuple[str, str]]) -> int:
    """Run in the process callgrind watches: each benchmark once, markers around its N calls."""
    slow = parse_slowdown(os.environ.get(SLOWDOWN_ENV, ""))
    for module, test in selected:
        factor = slow[1] if slow and slow[0] in test else 1
        fn = getattr(importlib.import_module(module), test)
        bench = CountingBenchmark(test, factor)
        fn(bench)
        print(f"measured {test}", flush=True)
    return 0


def _parts(out_prefix: Path) -> list[int]:
    """Ir of every dumped part, in dump order (callgrind writes PREFIX, PREFIX.1, PREFIX.2 ...)."""
    files = [p for p in out_prefix.parent.iterdir() if p.name.startswith(out_prefix.name)]
    ordered = sorted(files, key=lambda p: int(p.name.rsplit(".", 1)[1]) if p.name != out_prefix.name else 1 << 30)
    parts = []
    for p in ordered:
        m = re.search(r"^summary: (\d+)$", p.read_text(errors="replace"), re.M)
        if m:
            parts.append(int(m.group(1)))
    return parts


def measure(selected: list[tuple[str, str]]) -> dict[str, float]:
    """Instructions per call of each selected benchmark's function, from one run under callgrind."""
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        raise RuntimeError("valgrind is not installed (apt-get install valgrind)")
    with tempfile.TemporaryDirectory(prefix="lbbench-callgrind-") as tmp:
        prefix = Path(tmp) / "cg.out"
        names = ",".join(f"{m}:{t}" for m, t in selected)
        env = {**os.environ, "PYTHONHASHSEED": "0", "PYTHONPATH": os.pathsep.join(
            [str(HERE), str(ROOT), os.environ.get("PYTHONPATH", "")])}
        argv = [valgrind, "--tool=callgrind", f"--callgrind-out-file={prefix}", "--dump-before=os_getppid",
                "--dump-instr=no", "--dump-line=no", sys.executable, str(Path(__file__)), "--child", names]
        done = subprocess.run(argv, env=env, cwd=str(ROOT), capture_output=True, text=True, timeout=900)
        if done.returncode != 0:
            raise RuntimeError(f"the benchmarks failed under valgrind (exit {done.returncode}):\n"
                               f"{done.stdout[-2000:]}{done.stderr[-2000:]}")
        parts = _parts(prefix)
    # part 1: start-up to the first marker; then for each benchmark: its N calls, then what lies
    # between its closing marker and the next benchmark's opening one
    if len(parts) < 2 * len(selected) + 1:
        raise RuntimeError(f"expected {2 * len(selected) + 1} callgrind parts, found {len(parts)}")
    counts = {t: parts[1 + 2 * i] / CALLS for i, (_, t) in enumerate(selected)}
    for name, floor in NET_OF.items():
        if name in counts and floor in counts:
            counts[name] -= counts[floor]
    return counts


def compare(now: dict[str, float], baseline: dict[str, float], threshold: float) -> bool:
    ok = True
    print(f"{'hot path':<45} {'baseline':>12} {'now':>12}  ratio   (instructions per request)")
    for name, value in now.items():
        base = baseline.get(name)
        if base is None:
            print(f"{name:<45} {'-':>12} {value:>12.0f}  (not in the baseline)")
            continue
        ratio = value / base
        flag = f"  REGRESSION (> {threshold:g}x)" if ratio > threshold else ""
        ok &= not flag
        print(f"{name:<45} {base:>12.0f} {value:>12.0f}  {ratio:.2f}x{flag}")
    return ok


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--child", metavar="MODULE:TEST,...", help=argparse.SUPPRESS)
    p.add_argument("-k", dest="select", help="only the hot paths whose test name contains this")
    p.add_argument("--json", type=Path, help="write the measured counts here")
    p.add_argument("--baseline", type=Path, default=BASELINE)
    p.add_argument("--threshold", type=float, default=THRESHOLD)
    p.add_argument("--write-baseline", type=Path, help="write the measured counts as the new baseline")
    args = p.parse_args(argv)
    if args.child:
        return child([tuple(x.split(":", 1)) for x in args.child.split(",")])  # type: ignore[misc]
    wanted = {t for _, t in HOT_PATHS if not args.select or args.select in t}
    wanted |= {NET_OF[t] for t in wanted if t in NET_OF}  # a net count needs its floor measured too
    selected = [hp for hp in HOT_PATHS if hp[1] in wanted]
    try:
        now = measure(selected)
    except (RuntimeError, subprocess.TimeoutExpired) as e:
        print(f"instruction counts: {e}", file=sys.stderr)
        return 2
    doc = {"schema": SCHEMA, "calls": CALLS, "instructions_per_call": now}
    if args.json:
        args.json.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    if args.write_baseline:
        args.write_baseline.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
        print(f"wrote {args.write_baseline}")
        return 0
    baseline = json.loads(args.baseline.read_text())["instructions_per_call"]
    ok = compare(now, baseline, args.threshold)
    print(f"instruction counts: {'passed' if ok else 'FAILED'} (threshold {args.threshold:g}x)")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
