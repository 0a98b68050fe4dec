"""The steady-state theory table: one row per front end and rate, with intervals and a verdict."""

from __future__ import annotations

from collections.abc import Sequence

from lbbench.report.doc import Bullets, Table
from lbbench.report.loader import Results
from lbbench.report.metrics import fmt_ms
from lbbench.report.steady import SteadyRow, tolerance
from lbbench.report.verdict import fmt_ci


def _err(e: float | None) -> str:
    return "–" if e is None else f"{e:+.1%}"


def steady_table(r: Results, rows: Sequence[SteadyRow], reasons: Sequence[str]) -> tuple[Table | None, Bullets | None]:
    tol = tolerance(r)
    cells = tuple(
        (
            s.frontend,
            f"{s.rate_rps:g}",
            s.model + (f" (ρ {s.utilisation:.2f})" if s.utilisation is not None else ""),
            s.window,
            fmt_ci(s.mean, s.measured_mean_s),
            fmt_ms(s.predicted_mean_s),
            _err(s.rel_error("mean")),
            fmt_ci(s.p99, s.measured_p99_s),
            fmt_ms(s.predicted_p99_s),
            _err(s.rel_error("p99")),
            s.reason or s.verdict(tol),
        )
        for s in rows
    )
    table = None
    if cells:
        refs = sorted({s.reference for s in rows if s.reference != "–"})
        table = Table(
            ("front end", "rate (rps)", "model", "steady window", "mean (ms)", "predicted", "error",
             "p99 (ms)", "predicted", "error", "verdict"),
            cells,
            align=("l", "r", "l", "l", "r", "r", "r", "r", "r", "r", "l"),
            caption="Successful requests inside the steady window only (after the warm-up, without each event's "
            "error window and recovery) [95% interval, batch means]; predicted: "
            + (", ".join(refs) or "the model")
            + "; error = (measured − predicted) / predicted. "
            + (f"Verdict: pass when both errors are within ±{tol:.0%} ([theory] tolerance)." if tol is not None
               else "No [theory] tolerance configured: no verdict."),
        )
    return table, (Bullets(tuple(reasons)) if reasons else None)
