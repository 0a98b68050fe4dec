"""Shared plotting kit: figures with fixed margins, the Agg canvas, colours, phase selection, CDFs.

Matplotlib is used through the object API with the Agg canvas: no pyplot, no global state, safe
to call from any thread or after any other use of matplotlib.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from lbbench.report.loader import Results, first_repeat, phase_mask
from lbbench.results.atomic import replace_atomically
from lbbench.results.files import is_ok

DPI = 100
WIDTH_IN = 10.0
ROW_IN = 2.3
PALETTE = (
    "#1f77b4",
    "#d62728",
    "#2ca02c",
    "#ff7f0e",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
)
ERROR_COLORS = {
    "refused": "#d62728",
    "reset": "#ff7f0e",
    "timeout": "#9467bd",
    "connect_timeout": "#8c564b",
    "unreachable": "#bc8f8f",
    "truncated": "#e377c2",
    "http_5xx": "#1f77b4",
    "http_4xx": "#17becf",
    "other": "#7f7f7f",
    "http_other": "#bcbd22",
}
CDF_POINTS = 4000  # a CDF drawn from at most this many points per curve, tail kept exact


@dataclass(frozen=True)
class Plot:
    name: str
    title: str
    path: Path
    caption: str = ""


@dataclass(frozen=True)
class PlotSet:
    plots: tuple[Plot, ...]
    notes: tuple[str, ...]  # plots not drawn, and why


def colors(names: Sequence[str]) -> dict[str, str]:
    return {n: PALETTE[i % len(PALETTE)] for i, n in enumerate(names)}


# -- selection ----------------------------------------------------------------------------------------
def shown_frontends(results: Results) -> list[str]:
    """Front ends with at least one measured phase at the first rate."""
    return [
        n
        for n in results.frontend_names
        if any(p.frontend == n and p.rate_rps == results.first_rate and p.stats for p in results.phases)
    ]


def phase_frames(results: Results, frontend: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(timeseries, events) of the front end's first repeat at the first rate."""
    rep = first_repeat(results, frontend)
    ts, ev = results.timeseries, results.events
    ts = ts.loc[phase_mask(ts, frontend, results.first_rate, rep)] if len(ts) else ts
    ev = ev.loc[phase_mask(ev, frontend, results.first_rate, rep)] if len(ev) else ev
    return ts.sort_values("t_s") if "t_s" in ts.columns else ts, ev


def scope_note(results: Results) -> str:
    """Which phase a time-series figure shows, when there is a choice."""
    parts = []
    if len(results.rates) > 1:
        others = ", ".join(f"{r:g}" for r in results.rates[1:])
        parts.append(f"at the first rate, {results.first_rate:g} rps (also measured: {others} rps)")
    if max((f.repeats for f in results.frontends), default=1) > 1:
        parts.append("first repeat only")
    return ("Shown " + "; ".join(parts) + ".") if parts else ""


def timeline_events(ev: pd.DataFrame) -> list[tuple[float, str]]:
    if not len(ev):
        return []
    fired = ev.loc[ev["kind"] == "event"].sort_values("at_s")
    labels = (fired["detail"].astype(str) + " " + fired["target"].astype(str)).str.strip()
    return list(zip(fired["at_s"].astype(float).tolist(), labels.tolist(), strict=True))


# -- drawing helpers ----------------------------------------------------------------------------------
def new_figure(
    rows: int,
    cols: int = 1,
    height: float = ROW_IN,
    sharex: bool = True,
    sharey: bool = False,
    bottom_in: float = 0.6,
    left_in: float = 0.8,
    wspace: float = 0.25,
    top_in: float = 0.35,
) -> tuple[Figure, list[Axes]]:
    """Margins fixed in inches: matplotlib's constrained layout costs ~1 s per figure on log axes."""
    fig_h = max(2.6, top_in + bottom_in + height * rows)
    fig = Figure(figsize=(WIDTH_IN, fig_h), dpi=DPI)
    FigureCanvasAgg(fig)
    fig.subplots_adjust(
        left=left_in / WIDTH_IN,
        right=1 - 0.75 / WIDTH_IN,
        top=1 - top_in / fig_h,
        bottom=bottom_in / fig_h,
        hspace=0.3,
        wspace=wspace,
    )
    axes = fig.subplots(rows, cols, sharex=sharex, sharey=sharey, squeeze=False)
    return fig, [ax for row in axes for ax in row]


def save(fig: Figure, out_dir: Path, name: str, title: str, caption: str = "") -> Plot:
    path = replace_atomically(out_dir / f"{name}.png", lambda tmp: fig.savefig(tmp, dpi=DPI, format="png"))
    return Plot(name, title, path, caption)


def mark_events(ax: Axes, events: list[tuple[float, str]], label: bool = True) -> None:
    for at, text in events:
        ax.axvline(at, color="#444", linestyle="--", linewidth=1)
        if label:
            ax.annotate(
                text,
                xy=(at, 1.0),
                xycoords=("data", "axes fraction"),
                xytext=(3, -3),
                textcoords="offset points",
                va="top",
                fontsize=8,
                color="#444",
            )


def empty(ax: Axes, text: str) -> None:
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", color="#666")


def log_ms(ax: Axes, axis: str = "y") -> None:
    """A log scale labelled 1, 2, 5, 10, 20, ... (plain numbers: no 6x10^0, no mathtext to typeset)."""
    target = ax.yaxis if axis == "y" else ax.xaxis
    (ax.set_yscale if axis == "y" else ax.set_xscale)("log")
    target.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    target.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}"))
    target.set_minor_formatter(NullFormatter())


def style(ax: Axes, title: str) -> None:
    ax.set_title(title, loc="left", fontsize=10, y=1.0)  # a fixed y skips a costly auto-placement pass
    ax.grid(True, alpha=0.3)


def _ecdf(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted values and their CDF, thinned evenly in the body and exactly in the tail."""
    v = np.sort(values)
    n = v.size
    cdf = np.arange(1, n + 1) / n
    if n > CDF_POINTS:
        body = np.linspace(0, n - 1, CDF_POINTS // 2).astype(int)
        tail = (n - np.unique(np.geomspace(1, n, CDF_POINTS // 2).astype(int))).clip(0, n - 1)
        keep = np.unique(np.concatenate([body, tail, [n - 1]]))
        v, cdf = v[keep], cdf[keep]
    return v, cdf


def ok_latencies(results: Results, frontend: str) -> np.ndarray:
    rows = results.requests
    if not len(rows):
        return np.array([], dtype=float)
    rows = rows.loc[phase_mask(rows, frontend, results.first_rate)]
    lat: np.ndarray = rows.loc[is_ok(rows), "latency_s"].dropna().to_numpy(dtype=float)
    return lat


def draw_cdf(axes: list[Axes], curves: list[tuple[str, np.ndarray, str, str]]) -> None:
    """curves: (label, latencies in s, colour, linestyle). Left: CDF, log x. Right: 1 - CDF, log-log."""
    cdf_ax, tail_ax = axes
    for label, lat, color, linestyle in curves:
        if lat.size == 0:
            continue
        v, cdf = _ecdf(lat * 1e3)
        v = np.maximum(v, 1e-3)  # log axis: clamp a 0 ms sample to 1 us
        cdf_ax.plot(v, cdf, color=color, linestyle=linestyle, label=f"{label} (n={lat.size:,})")
        # P(X >= x): the largest sample sits at 1/n instead of at 0, which a log axis cannot show
        tail = 1.0 - cdf + 1.0 / lat.size
        tail_ax.plot(v, tail, color=color, linestyle=linestyle, label=label)
    for ax, title in ((cdf_ax, "CDF"), (tail_ax, "tail: 1 − CDF (log)")):
        style(ax, title)
        log_ms(ax, "x")
        ax.set_xlabel("latency (ms, log scale)")
    cdf_ax.set_ylabel("fraction of requests ≤ x")
    tail_ax.set_yscale("log")
    tail_ax.set_ylabel("fraction of requests ≥ x")
    for q, name in ((1e-2, "p99"), (1e-3, "p99.9")):
        tail_ax.axhline(q, color="#888", linewidth=0.8, linestyle=":")
        tail_ax.annotate(
            name,
            xy=(0, q),
            xycoords=("axes fraction", "data"),
            xytext=(2, 2),
            textcoords="offset points",
            fontsize=8,
            color="#666",
        )
    if any(c[1].size for c in curves):
        cdf_ax.legend(loc="upper left", fontsize=8)
