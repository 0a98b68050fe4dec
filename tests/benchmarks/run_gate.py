"""The micro-benchmark regression gate, as CI runs it.

    python tests/benchmarks/run_gate.py [--json results/benchmarks-ci.json] [--baseline ...] [-k EXPR]

Runs every micro-benchmark in tests/benchmarks/ (pytest-benchmark, enabled) with a bounded
time per benchmark, keeps the JSON (the CI artifact), then compares it with the committed
baseline (see compare_baseline.py). What exceeds the threshold is measured again (up to
two more attempts, only those benchmarks and the calibration) and judged on its best
attempt: a neighbour's burst on a shared machine passes, a real regression fails every
attempt. Exit 0: no regression; 1: a regression; 2: the benchmarks themselves failed.
Takes ~10-15 s on a 2-core machine, a few seconds more per re-measured benchmark.

To see it catch a slowdown: ``LBBENCH_BENCH_SLOWDOWN=test_parse_one_response=2`` runs that
benchmark's hot path twice per call (see slowdown.py), and the gate fails.

To refresh the baseline after an intended change (best of 3 runs):
    for i in 1 2 3; do python tests/benchmarks/run_gate.py --json /tmp/b$i.json --no-compare; done
    python tests/benchmarks/compare_baseline.py /tmp/b1.json /tmp/b2.json /tmp/b3.json \\
        --write-baseline results/baseline/benchmarks.json
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(HERE))

import compare_baseline  # noqa: E402

RETRIES = 2  # extra attempts for what looks like a regression
PYTEST_ARGS = (
    "--benchmark-enable", "--benchmark-only",
    "--dist=no",  # the suite's addopts ask xdist to distribute; with it on, pytest-benchmark disables itself
    "--benchmark-min-rounds=20",
    "--benchmark-min-time=0.00005",  # short functions are looped so the timer's cost stays small
    "--benchmark-warmup=on", "--benchmark-warmup-iterations=200",
    "--benchmark-columns=min,median,rounds",
    "-q", "-p", "no:randomly",
)


MAX_TIME_S = 0.4  # seconds per benchmark: bounds the gate's runtime
RETRY_MAX_TIME_S = 1.5  # a suspect is measured longer: half-speed spells of this VM last a second or two


def run_benchmarks(json_out: Path, select: str | None, max_time_s: float = MAX_TIME_S) -> int:
    json_out.parent.mkdir(parents=True, exist_ok=True)
    # the benchmarks' pytest is no xdist worker, even when the suite that runs this gate is: it inherits our
    # environment, and pytest-benchmark disables itself where PYTEST_XDIST_WORKER is set
    for name in [k for k in os.environ if k.startswith("PYTEST_XDIST")]:
        del os.environ[name]
    argv = [sys.executable, "-m", "pytest", str(HERE), *PYTEST_ARGS, f"--benchmark-max-time={max_time_s}",
            f"--benchmark-json={json_out}"]
    if select:
        argv += ["-k", select]
    from lbbench.system.procs import Supervisor

    with Supervisor() as sup:  # dies with us: no benchmark left running if the gate is killed
        child = sup.spawn("benchmarks", argv, stdin=subprocess.DEVNULL, stdout=None, cwd=str(ROOT))
        return child.popen.wait()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="run the micro-benchmarks and compare them with the baseline")
    p.add_argument("--json", type=Path, default=ROOT / "results" / "benchmarks-ci.json",
                   help="where the pytest-benchmark JSON goes (the CI artifact)")
    p.add_argument("--baseline", type=Path, default=ROOT / compare_baseline.DEFAULT_BASELINE)
    p.add_argument("--threshold", type=float, default=compare_baseline.DEFAULT_THRESHOLD)
    p.add_argument("-k", dest="select", help="only benchmarks matching this pytest -k expression "
                   "(test_calibration is always added)")
    p.add_argument("--no-compare", action="store_true", help="only run and write the JSON")
    args = p.parse_args(argv)
    select = f"({args.select}) or {compare_baseline.CALIBRATION}" if args.select else None
    if run_benchmarks(args.json, select) != 0:
        print("benchmark gate: the benchmarks themselves failed", file=sys.stderr)
        return 2
    if args.no_compare:
        return 0
    runs = [args.json]
    baseline = compare_baseline.load_baseline(args.baseline)
    for attempt in range(2, 2 + RETRIES):
        suspects = compare_baseline.regressions(compare_baseline.best_of(runs), baseline, args.threshold)
        spell = compare_baseline.measured_in_a_spell(runs)
        if not suspects and not spell:
            break
        names = sorted({s.rsplit("::", 1)[1] for s in (*suspects, *spell)})
        print(f"benchmark gate: {', '.join(names)} above {args.threshold:g}x or measured in a slow spell; "
              f"measuring again (attempt {attempt})")
        again = args.json.with_name(f"{args.json.stem}-attempt{attempt}.json")
        if run_benchmarks(again, f"{' or '.join(names)} or {compare_baseline.CALIBRATION}", RETRY_MAX_TIME_S) != 0:
            return 2
        runs.append(again)
    return compare_baseline.main([*map(str, runs), "--baseline", str(args.baseline),
                                  "--threshold", str(args.threshold)])


if __name__ == "__main__":
    sys.exit(main())
