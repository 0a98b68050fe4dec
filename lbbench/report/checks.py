"""Evaluate pass/fail checks (lbbench.model.checks) on a results folder; record them in summary.json.

A check is evaluated against the headline numbers (lbbench.report.headline: first rate, repeats
merged) or, for `theory.*`, against the steady-state comparison (lbbench.report.steady). A check
that names a front end that measured nothing fails: a threshold must never pass by absence.
`lbbench run` and `lbbench report` exit with CHECK_FAILED_EXIT when any check fails.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from lbbench.errors import UserError
from lbbench.model.checks import Check, parse_check
from lbbench.report.headline import SLO_FALLBACK_S, ClientView, ranked, view_of_rows
from lbbench.report.loader import Results
from lbbench.report.steady import SteadyRow, steady_rows
from lbbench.results.writer import record_checks

CHECK_FAILED_EXIT = 3  # distinct from 1 (cut short, summary disagrees) and 2 (bad input)

Value = float | None


@dataclass(frozen=True)
class CheckResult:
    check: str
    frontend: str
    value: Value  # None: not measured
    passed: bool
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return {"check": self.check, "frontend": self.frontend, "value": self.value, "passed": self.passed,
                "detail": self.detail}


def _latency(kind: str, stat: str) -> Callable[[ClientView], Value]:
    return lambda v: (v.all_latency if kind == "all" else v.ok_latency).get(stat)


GETTERS: dict[str, Callable[[ClientView], Value]] = {
    **{m: _latency("all", m) for m in ("mean", "p50", "p99", "p999", "max")},
    **{f"ok_{m}": _latency("ok", m) for m in ("mean", "p50", "p99", "p999", "max")},
    "requests": lambda v: float(v.requests),
    "ok": lambda v: float(v.ok),
    "errors": lambda v: float(v.error_count),
    "lost": lambda v: v.lost if v.lost is not None else 0.0,  # no event: nothing lost
    "errors_pct": lambda v: v.errors_pct,
    "slo_pct": lambda v: v.slo_pct,
    "achieved_rps": lambda v: None,  # filled from the summary below
    "recovery_s": lambda v: v.recovery_s if v.recovery_s is not None else 0.0,
    "error_window_s": lambda v: v.error_window_s if v.error_window_s is not None else 0.0,
}


def parse_all(texts: Sequence[str], where: str) -> list[Check]:
    out = []
    for t in texts:
        try:
            out.append(parse_check(t))
        except ValueError as e:
            raise UserError(f"{where}: {e}") from None
    return out


def configured(r: Results) -> list[Check]:
    texts = (r.config.get("report") or {}).get("checks") or []
    return parse_all([str(t) for t in texts], f"{r.folder}/summary.json config.report.checks")


def _fmt(metric: str, value: Value) -> str:
    if value is None:
        return "not measured"
    base = metric.removeprefix("ok_")
    if base in ("mean", "p50", "p99", "p999", "max"):
        return f"{value * 1e3:.4g} ms"
    if metric.startswith("theory."):
        return f"{value:+.1%}"
    return f"{value:.4g}"


def _theory_value(rows: list[SteadyRow], frontend: str, stat: str, first_rate: float | None) -> Value:
    for row in rows:
        if row.frontend == frontend and row.rate_rps == first_rate and not row.reason:
            return row.rel_error(stat)
    return None


def evaluate(r: Results, checks: Sequence[Check]) -> list[CheckResult]:
    if not checks:
        return []
    views = {v.frontend: v for v in ranked(r)}
    theory = steady_rows(r)[0] if any(c.is_theory for c in checks) else []
    out = []
    for c in checks:
        targets = list(views) if c.target == "*" else [c.target]
        if not targets:
            out.append(CheckResult(c.text, "*", None, False, "no front end measured anything"))
        for name in targets:
            if c.is_theory:
                value = _theory_value(theory, name, c.metric.split(".", 1)[1], r.first_rate)
            elif name not in views:
                value = None
            elif c.metric == "achieved_rps":
                stats = r.frontend(name)
                value = None if stats is None else stats.achieved_rps
            else:
                value = GETTERS[c.metric](views[name])
            passed = value is not None and c.passes(value)
            out.append(CheckResult(c.text, name, value, passed, f"{name}.{c.metric} = {_fmt(c.metric, value)}"))
    return out


def check_rows(rows: pd.DataFrame, checks: Sequence[Check], target: str) -> list[CheckResult]:
    """`lbbench load`: checks on one target's rows; `*` or any name stands for it (SLO: SLO_FALLBACK_S)."""
    view = view_of_rows(target, None, rows, SLO_FALLBACK_S)
    out = []
    for c in checks:
        value = None if c.is_theory or c.metric == "achieved_rps" else GETTERS[c.metric](view)
        passed = value is not None and c.passes(value)
        out.append(CheckResult(c.text, target, value, passed, f"{c.metric} = {_fmt(c.metric, value)}"))
    return out


def record(r: Results, results: Sequence[CheckResult]) -> None:
    """Add `checks` (every result, pass or fail) to summary.json, replacing any earlier evaluation."""
    record_checks(r.folder, [c.to_dict() for c in results])


def recorded(folder: Path) -> list[CheckResult]:
    """The check results `write_report` recorded in summary.json (none when the report was not written)."""
    try:
        data = json.loads((folder / "summary.json").read_text())
    except (OSError, ValueError):
        return []
    return [CheckResult(str(c.get("check")), str(c.get("frontend")), c.get("value"), bool(c.get("passed")),
                        str(c.get("detail"))) for c in data.get("checks") or [] if isinstance(c, dict)]


def say(results: Sequence[CheckResult], command: str) -> int:
    """Print one line per check (failures on stderr); CHECK_FAILED_EXIT if any failed, else 0."""
    for c in results:
        if c.passed:
            print(f"check passed: {c.check} ({c.detail})")
        else:
            print(f"lbbench {command}: check failed: {c.check} ({c.detail})", file=sys.stderr)
    return CHECK_FAILED_EXIT if any(not c.passed for c in results) else 0
