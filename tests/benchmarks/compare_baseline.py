"""Compare a pytest-benchmark JSON against the committed baseline; exit 1 on a regression.

    python tests/benchmarks/compare_baseline.py CURRENT.json [MORE.json ...]
        [--baseline results/baseline/benchmarks.json] [--threshold 1.6] [--write-baseline OUT.json]

The statistic is each benchmark's *minimum* round time (noise on a shared machine only ever
adds time, so the minimum is the steadiest figure), divided by the minimum time of the
calibration workload measured right before and after it (tests/benchmarks/conftest.py): a
slower machine, even one slow for a second, cancels out. A benchmark
regresses when current/baseline of that normalised time exceeds the threshold (default
1.6: noise seen between runs on a busy 2-core machine stays well below it, a 2x slowdown
is above it). Given several current runs (the gate re-runs what failed), each benchmark's
best normalised time over them is judged: a neighbour's burst does not last through every
attempt, a real regression does. Benchmarks new since the baseline are listed, not judged;
ones that disappeared are listed as a warning.

`--write-baseline` writes a new baseline from one or more runs, the same way (so a noisy run
cannot loosen the gate).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

SCHEMA = "lbbench.benchmarks-baseline/1"
CALIBRATION = "test_calibration"
DEFAULT_THRESHOLD = 1.6
DEFAULT_BASELINE = Path("results/baseline/benchmarks.json")


PAIRED_KEY = "calibration_min_s"  # set by conftest.py: the calibration measured around that benchmark


def load_run(path: Path) -> dict[str, tuple[float, float]]:
    """fullname -> (min seconds / its calibration, that calibration), from a --benchmark-json file.

    The calibration is the one measured right around the benchmark (extra_info), else the run's
    test_calibration (files from before the pairing).
    """
    doc = json.loads(path.read_text())
    times = {b["fullname"]: float(b["stats"]["min"]) for b in doc.get("benchmarks", [])}
    if not times:
        raise SystemExit(f"{path}: no benchmarks in it (was --benchmark-enable given?)")
    paired = {b["fullname"]: float(b.get("extra_info", {}).get(PAIRED_KEY) or 0.0) for b in doc["benchmarks"]}
    out = {}
    for name, t in times.items():
        if not name.endswith("::" + CALIBRATION):
            cal = paired[name] if paired[name] > 0 else calibration_of(times, str(path))
            out[name] = (t / cal, cal)
    return out


def calibration_of(run: dict[str, float], where: str) -> float:
    hits = [v for k, v in run.items() if k.endswith("::" + CALIBRATION)]
    if len(hits) != 1 or hits[0] <= 0:
        raise SystemExit(f"{where}: expected exactly one {CALIBRATION} benchmark, found {len(hits)}")
    return hits[0]


SPELL = 1.2  # a calibration more than 20% slower than the fastest seen was measured in a slow spell


def best_of(paths: list[Path]) -> dict[str, float]:
    """Each benchmark's lowest normalised time over the runs measured at the machine's normal speed.

    A half-speed spell does not slow every kind of code alike (the interpreter-bound yardstick
    more than C parsing), so a ratio taken inside one is off either way: only runs whose paired
    calibration is within SPELL of the fastest calibration of that benchmark count.
    """
    runs = [load_run(p) for p in paths]
    out = {}
    for name in sorted(set().union(*runs)):
        seen = [r[name] for r in runs if name in r]
        fastest = min(cal for _, cal in seen)
        out[name] = min(ratio for ratio, cal in seen if cal <= fastest * SPELL)
    return out


def measured_in_a_spell(paths: list[Path]) -> list[str]:
    """Benchmarks whose every sample's yardstick ran more than SPELL slower than the fastest of all:
    measured during a slow spell, their ratio cannot be trusted either way (the gate measures them again)."""
    fastest = math.inf
    samples: dict[str, list[float]] = {}
    for p in paths:
        doc = json.loads(p.read_text())
        for b in doc.get("benchmarks", []):
            cal = float(b.get("extra_info", {}).get(PAIRED_KEY) or 0.0)
            if b["fullname"].endswith("::" + CALIBRATION):
                cal = float(b["stats"]["min"])
            elif cal > 0:
                samples.setdefault(b["fullname"], []).append(cal)
            if cal > 0:
                fastest = min(fastest, cal)
    return sorted(n for n, cals in samples.items() if min(cals) > fastest * SPELL)


def regressions(current: dict[str, float], baseline: dict[str, float], threshold: float) -> list[str]:
    return [n for n, v in current.items() if n in baseline and v / baseline[n] > threshold]


def make_baseline(paths: list[Path]) -> dict[str, Any]:
    return {
        "schema": SCHEMA,
        "created_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "statistic": "min round time / min time of the calibration workload around it, best over the runs",
        "runs": len(paths),
        "machine": {"python": platform.python_version(), "machine": platform.machine(), "node": platform.node()},
        "benchmarks": best_of(paths),
    }


def load_baseline(path: Path) -> dict[str, float]:
    doc = json.loads(path.read_text())
    if doc.get("schema") != SCHEMA:
        raise SystemExit(f"{path}: schema {doc.get('schema')!r}, expected {SCHEMA!r}")
    return {str(k): float(v) for k, v in doc["benchmarks"].items()}


def compare(current: dict[str, float], baseline: dict[str, float], threshold: float) -> tuple[list[str], bool]:
    """Report lines and whether any benchmark regressed."""
    lines = [f"{'benchmark':<78} {'baseline':>9} {'now':>9} {'ratio':>6}"]
    bad = regressions(current, baseline, threshold)
    for name in sorted(current):
        now = current[name]
        base = baseline.get(name)
        if base is None:
            lines.append(f"{name:<78} {'-':>9} {now:>9.4g} {'new':>6}")
            continue
        verdict = f"  REGRESSION (> {threshold:g}x)" if name in bad else ""
        lines.append(f"{name:<78} {base:>9.4g} {now:>9.4g} {now / base:>5.2f}x{verdict}")
    for name in sorted(set(baseline) - set(current)):
        lines.append(f"{name:<78} warning: in the baseline but not measured now (renamed or removed?)")
    return lines, bool(bad)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("current", type=Path, nargs="+", help="pytest-benchmark JSON file(s) of this tree")
    p.add_argument("--baseline", type=Path, default=DEFAULT_BASELINE)
    p.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD,
                   help=f"fail when a normalised time grew by more than this factor (default {DEFAULT_THRESHOLD})")
    p.add_argument("--write-baseline", type=Path, help="write a baseline from the given run(s) instead of comparing")
    args = p.parse_args(argv)
    if args.write_baseline:
        doc = make_baseline(args.current)
        args.write_baseline.parent.mkdir(parents=True, exist_ok=True)
        args.write_baseline.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
        print(f"wrote {args.write_baseline} ({len(doc['benchmarks'])} benchmarks from {doc['runs']} run(s))")
        return 0
    lines, failed = compare(best_of(args.current), load_baseline(args.baseline), args.threshold)
    print("\n".join(lines))
    print(f"benchmark gate: {'FAILED' if failed else 'passed'} (threshold {args.threshold:g}x, normalised by "
          f"{CALIBRATION}, best of {len(args.current)} run(s))")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
