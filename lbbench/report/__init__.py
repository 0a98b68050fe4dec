"""The report of a results folder: plots, report.html (self-contained) and report.md, from the files alone.

    from lbbench.report import write_report
    paths = write_report(Path("results/20250101T000000Z-quickstart"))
    paths.html, paths.markdown, paths.plots

It never talks to live processes, so any run can be re-reported later (`lbbench report DIR`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from lbbench.report.loader import Results, load_results
from lbbench.results.atomic import write_text_atomically

if TYPE_CHECKING:
    from lbbench.model.checks import Check
    from lbbench.report.checks import CheckResult

__all__ = ["ReportPaths", "load_results", "write_report"]


@dataclass(frozen=True)
class ReportPaths:
    html: Path
    markdown: Path
    plots: tuple[Path, ...]
    checks: tuple[CheckResult, ...] = ()

    @property
    def failed_checks(self) -> tuple[CheckResult, ...]:
        return tuple(c for c in self.checks if not c.passed)


def write_report(folder: Path, results: Results | None = None, extra_checks: Sequence[Check] = ()) -> ReportPaths:
    """Write DIR/plots/*.png, DIR/report.html and DIR/report.md; evaluate the checks into summary.json.

    Raises UserError if `folder` is not a results folder. `results`: already loaded (saves a read).
    `extra_checks`: from the command line, evaluated with the config's [[checks]].
    """
    from lbbench.report import html, markdown
    from lbbench.report.build import build_document
    from lbbench.report.checks import configured, evaluate, record
    from lbbench.report.headline import ranked
    from lbbench.report.headline_plots import headline_figure
    from lbbench.report.plotkit import Plot
    from lbbench.report.plots import make_plots

    r = results if results is not None else load_results(folder)
    checks = tuple(evaluate(r, [*configured(r), *extra_checks]))
    record(r, checks)
    views = ranked(r)
    (r.folder / "plots").mkdir(parents=True, exist_ok=True)
    headline = headline_figure(views, r.folder / "plots") if views else None
    plot_set = make_plots(r, r.folder / "plots")
    doc = build_document(r, plot_set, views, headline if isinstance(headline, Plot) else None, checks)
    html_path = r.folder / "report.html"
    md_path = r.folder / "report.md"
    write_text_atomically(html_path, html.render(doc))
    write_text_atomically(md_path, markdown.render(doc, r.folder))
    drawn = ((headline.path,) if isinstance(headline, Plot) else ()) + tuple(p.path for p in plot_set.plots)
    return ReportPaths(html_path, md_path, drawn, checks)
