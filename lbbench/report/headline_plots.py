"""The headline figure: what each front end's clients got, best first, in three panels.

Failed requests (by kind), the share answered OK within the SLO, and p50/p99 counting every
request with their 95% intervals. Front ends are rows (horizontal bars), so six names stay readable.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from lbbench.report.headline import ClientView
from lbbench.report.plotkit import ERROR_COLORS, Plot, log_ms, new_figure, save, style


def headline_figure(views: Sequence[ClientView], out_dir: Path, name: str = "headline", rate: str = "") -> Plot | str:
    if not views:
        return "headline figure: no front end measured anything"
    order = list(reversed(views))  # best at the top
    y = list(range(len(order)))
    labels = [v.frontend for v in order]
    fig, axes = new_figure(1, 3, height=max(1.4, 0.3 * len(order) + 0.5), sharex=False, sharey=True,
                           left_in=1.5, wspace=0.12, bottom_in=0.55)
    fail, slo, lat = axes
    _failed(fail, order, y)
    style(slo, f"answered OK within {views[0].slo_s * 1e3:g} ms (%)")
    slo.barh(y, [v.slo_pct or 0.0 for v in order], color="#3b7dd8")
    slo.set_xlim(0, 100)
    for yi, v in zip(y, order, strict=True):
        slo.annotate(f"{v.slo_pct or 0:.1f}", xy=(1, yi), va="center", fontsize=8, color="white")
    _latency(lat, order, y)
    fail.set_yticks(y, labels)
    fail.tick_params(axis="y", labelsize=9)
    caption = ("Best first (ranked on failed requests, then OK within the SLO, then p99)"
               + (f" at {rate}" if rate else "") + ". Latency counts every request, a failed one at the time "
               "the client gave up; bars are 95% intervals (batch means).")
    return save(fig, out_dir, name, "What the clients got", caption)


def _failed(ax: object, order: Sequence[ClientView], y: list[int]) -> None:
    from matplotlib.axes import Axes

    assert isinstance(ax, Axes)
    style(ax, "failed requests (%)")
    left = [0.0] * len(order)
    kinds = sorted({k for v in order for k in v.errors})
    for kind in kinds:
        widths = [100.0 * v.errors.get(kind, 0) / v.requests if v.requests else 0.0 for v in order]
        ax.barh(y, widths, left=left, color=ERROR_COLORS.get(kind, "#999"), label=kind)
        left = [a + b for a, b in zip(left, widths, strict=True)]
    for yi, total in zip(y, left, strict=True):
        ax.annotate(f"{total:.2g}" if total else "0", xy=(total, yi), xytext=(3, 0), textcoords="offset points",
                    va="center", fontsize=8)
    ax.set_xlim(0, max(1.0, max(left) * 1.3))
    if kinds:  # under the axis: inside, it hides the bars' totals
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=min(len(kinds), 4),
                  frameon=False)


def _latency(ax: object, order: Sequence[ClientView], y: list[int]) -> None:
    from matplotlib.axes import Axes

    assert isinstance(ax, Axes)
    style(ax, "latency, all requests (ms)")
    for stat, marker, color in (("p50", "o", "#2a9d8f"), ("p99", "s", "#d1495b")):
        for yi, v in zip(y, order, strict=True):
            iv, value = v.all_ci.get(stat), v.all_latency.get(stat)
            if value is None or not math.isfinite(value) or value <= 0:
                continue
            err = None if iv is None else [[(value - max(iv.lo, value * 0.01)) * 1e3], [(iv.hi - value) * 1e3]]
            ax.errorbar([value * 1e3], [yi], xerr=err, fmt=marker, color=color, capsize=3, markersize=5,
                        label=stat if yi == y[0] else None)
    log_ms(ax, "x")
    ax.legend(fontsize=7, loc="lower right")
