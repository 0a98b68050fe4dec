"""The report of a results folder: plots, report.html (self-contained) and report.md, from the files alone.

    from lbbench.report import write_report
    paths = write_report(Path("results/20250101T000000Z-quickstart"))
    paths.html, paths.markdown, paths.plots

It never talks to live processes, so any run can be re-reported later (`lbbench report DIR`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lbbench.report.loader import Results, load_results
from lbbench.results.atomic import write_text_atomically

__all__ = ["ReportPaths", "load_results", "write_report"]


@dataclass(frozen=True)
class ReportPaths:
    html: Path
    markdown: Path
    plots: tuple[Path, ...]


def write_report(folder: Path, results: Results | None = None) -> ReportPaths:
    """Write DIR/plots/*.png, DIR/report.html and DIR/report.md.

    Raises UserError if `folder` is not a results folder. `results`: already loaded (saves a read).
    """
    from lbbench.report import html, markdown
    from lbbench.report.build import build_document
    from lbbench.report.plots import make_plots

    r = results if results is not None else load_results(folder)
    plot_set = make_plots(r, r.folder / "plots")
    doc = build_document(r, plot_set)
    html_path = r.folder / "report.html"
    md_path = r.folder / "report.md"
    write_text_atomically(html_path, html.render(doc))
    write_text_atomically(md_path, markdown.render(doc, r.folder))
    return ReportPaths(html_path, md_path, tuple(p.path for p in plot_set.plots))
