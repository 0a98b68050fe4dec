"""The report's figures: one PNG per question, drawn from a results folder's data only.

Time-series figures show one phase per front end: the first rate (summary.json's per-front-end
numbers are at that rate too) and its first repeat; captions say so when there were more.
Matplotlib is used through the object API with the Agg canvas: no pyplot, no global state.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from lbbench.report.loader import FrontendStats, Results, first_repeat, phase_mask
from lbbench.results import is_ok

DPI = 100
WIDTH_IN = 10.0
ROW_IN = 2.3
PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf")
ERROR_COLORS = {"refused": "#d62728", "reset": "#ff7f0e", "timeout": "#9467bd", "connect_timeout": "#8c564b",
                "truncated": "#e377c2", "http_5xx": "#1f77b4", "http_4xx": "#17becf", "other": "#7f7f7f",
                "http_other": "#bcbd22"}
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


def make_plots(results: Results, out_dir: Path) -> PlotSet:
    out_dir.mkdir(parents=True, exist_ok=True)
    plots: list[Plot] = []
    notes: list[str] = []
    makers: tuple[Callable[[Results, Path], Plot | str], ...] = (
        latency_over_time, errors_over_time, latency_cdf, pod_share, queue_and_endpoints, failover_bars,
        latency_vs_rate)
    for make in makers:
        made = make(results, out_dir)
        if isinstance(made, Plot):
            plots.append(made)
        elif made:
            notes.append(made)
    return PlotSet(tuple(plots), tuple(notes))


# -- selection ----------------------------------------------------------------------------------------
def shown_frontends(results: Results) -> list[str]:
    """Front ends with at least one measured phase at the first rate."""
    return [n for n in results.frontend_names
            if any(p.frontend == n and p.rate_rps == results.first_rate and p.stats for p in results.phases)]


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
    return [(float(r.at_s), f"{r.detail} {r.target}".strip()) for r in fired.itertuples()]


# -- drawing helpers ----------------------------------------------------------------------------------
def new_figure(rows: int, cols: int = 1, height: float = ROW_IN, sharex: bool = True, sharey: bool = False,
            bottom_in: float = 0.6, left_in: float = 0.8, wspace: float = 0.25) -> tuple[Figure, list[Axes]]:
    """Margins fixed in inches: matplotlib's constrained layout costs ~1 s per figure on log axes."""
    fig_h = max(2.6, 0.4 + bottom_in + height * rows)
    fig = Figure(figsize=(WIDTH_IN, fig_h), dpi=DPI)
    FigureCanvasAgg(fig)
    fig.subplots_adjust(left=left_in / WIDTH_IN, right=1 - 0.75 / WIDTH_IN, top=1 - 0.35 / fig_h,
                        bottom=bottom_in / fig_h, hspace=0.45 * ROW_IN / height, wspace=wspace)
    axes = fig.subplots(rows, cols, sharex=sharex, sharey=sharey, squeeze=False)
    return fig, [ax for row in axes for ax in row]


def _save(fig: Figure, out_dir: Path, name: str, title: str, caption: str = "") -> Plot:
    path = out_dir / f"{name}.png"
    fig.savefig(path, dpi=DPI)
    return Plot(name, title, path, caption)


def _mark_events(ax: Axes, events: list[tuple[float, str]], label: bool = True) -> None:
    for at, text in events:
        ax.axvline(at, color="#444", linestyle="--", linewidth=1)
        if label:
            ax.annotate(text, xy=(at, 1.0), xycoords=("data", "axes fraction"), xytext=(3, -3),
                        textcoords="offset points", va="top", fontsize=8, color="#444")


def _empty(ax: Axes, text: str) -> None:
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", color="#666")


def _style(ax: Axes, title: str) -> None:
    ax.set_title(title, loc="left", fontsize=10)
    ax.grid(True, alpha=0.3)


# -- the figures --------------------------------------------------------------------------------------
def latency_over_time(results: Results, out_dir: Path) -> Plot | str:
    names = shown_frontends(results)
    if not names or "p99_s" not in results.timeseries.columns:
        return "latency over time: no time series in this results folder"
    fig, axes = new_figure(len(names), sharey=True)
    color = colors(results.frontend_names)
    for ax, name in zip(axes, names, strict=True):
        ts, ev = phase_frames(results, name)
        _style(ax, name)
        if ts["p99_s"].notna().any():
            ax.plot(ts["t_s"], ts["p99_s"] * 1e3, color=color[name], label="p99", linewidth=1.4)
            ax.plot(ts["t_s"], ts["p50_s"] * 1e3, color=color[name], label="p50", linewidth=1, alpha=0.55)
            ax.set_yscale("log")
            ax.legend(loc="upper left", fontsize=8)
        else:
            _empty(ax, "no requests")
        ax.set_ylabel("latency (ms)")
        _mark_events(ax, timeline_events(ev))
    axes[-1].set_xlabel("time since load start (s), by intended send time; 100 ms buckets")
    caption = "p50 and p99 of every request (ok or failed) in each 100 ms bucket; dashed lines: timeline events. "
    return _save(fig, out_dir, "latency_over_time", "Latency over time", caption + scope_note(results))


def errors_over_time(results: Results, out_dir: Path) -> Plot | str:
    names = shown_frontends(results)
    if not names or "errors" not in results.timeseries.columns:
        return "errors over time: no time series in this results folder"
    fig, axes = new_figure(len(names), sharey=True)
    for ax, name in zip(axes, names, strict=True):
        ts, ev = phase_frames(results, name)
        _style(ax, name)
        kinds = [c for c in ts.columns if c.startswith("err_") and ts[c].fillna(0).sum() > 0]
        bottom = np.zeros(len(ts))
        for col in kinds:
            values = ts[col].fillna(0).to_numpy(dtype=float)
            kind = col.removeprefix("err_")
            ax.bar(ts["t_s"], values, width=0.1, align="edge", bottom=bottom, label=kind,
                   color=ERROR_COLORS.get(kind, "#7f7f7f"))
            bottom += values
        if kinds:
            ax.legend(loc="upper left", fontsize=8)
        else:
            _empty(ax, "no errors")
        ax.set_ylabel("errors / 100 ms")
        _mark_events(ax, timeline_events(ev))
    axes[-1].set_xlabel("time since load start (s), by intended send time")
    return _save(fig, out_dir, "errors_over_time", "Errors over time, by kind",
                 "Failed requests per 100 ms bucket, stacked by kind. " + scope_note(results))


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
    return rows.loc[is_ok(rows), "latency_s"].dropna().to_numpy(dtype=float)


def draw_cdf(axes: list[Axes], curves: list[tuple[str, np.ndarray, str, str]]) -> None:
    """curves: (label, latencies in s, colour, linestyle). Left: CDF, log x. Right: 1 - CDF, log-log."""
    cdf_ax, tail_ax = axes
    for label, lat, color, style in curves:
        if lat.size == 0:
            continue
        v, cdf = _ecdf(lat * 1e3)
        v = np.maximum(v, 1e-3)  # log axis: clamp a 0 ms sample to 1 us
        cdf_ax.plot(v, cdf, color=color, linestyle=style, label=f"{label} (n={lat.size:,})")
        tail = 1.0 - cdf + 1.0 / lat.size  # the last sample sits at 1/n, not at 0 (log axis)
        tail_ax.plot(v, tail, color=color, linestyle=style, label=label)
    for ax, title in ((cdf_ax, "CDF"), (tail_ax, "tail: 1 − CDF (log)")):
        _style(ax, title)
        ax.set_xscale("log")
        ax.set_xlabel("latency (ms, log scale)")
    cdf_ax.set_ylabel("fraction of requests ≤ x")
    tail_ax.set_yscale("log")
    tail_ax.set_ylabel("fraction of requests > x")
    for q, name in ((1e-2, "p99"), (1e-3, "p99.9")):
        tail_ax.axhline(q, color="#888", linewidth=0.8, linestyle=":")
        tail_ax.annotate(name, xy=(0, q), xycoords=("axes fraction", "data"), xytext=(2, 2),
                         textcoords="offset points", fontsize=8, color="#666")
    if any(c[1].size for c in curves):
        cdf_ax.legend(loc="upper left", fontsize=8)


def latency_cdf(results: Results, out_dir: Path) -> Plot | str:
    names = shown_frontends(results)
    color = colors(results.frontend_names)
    curves = [(n, ok_latencies(results, n), color[n], "-") for n in names]
    if not any(c[1].size for c in curves):
        return "latency CDF: no successful requests in requests.parquet"
    fig, axes = new_figure(1, 2, height=3.6, sharex=False)
    draw_cdf(axes, curves)
    note = f"at {results.first_rate:g} rps, all repeats merged. " if len(results.rates) > 1 else ""
    return _save(fig, out_dir, "latency_cdf", "Latency distribution (successful requests)",
                 "Latency from the intended send time of every 2xx response; the right panel shows the tail. "
                 + note)


def initial_pods(ev: pd.DataFrame) -> int:
    """How many pods were ready when the load started (for the equal-share line)."""
    if not len(ev):
        return 0
    before = ev.loc[(ev["kind"] == "pod_ready") & (ev["at_s"] < 0), "target"]
    return int(before.nunique())


def pod_share(results: Results, out_dir: Path) -> Plot | str:
    fes = [f for f in results.frontends if f.pod_share]
    if not fes:
        return "pod share: no pod names in the responses (x-pod header)"
    rows = max(len(f.pod_share) for f in fes)
    fig, axes = new_figure(1, len(fes), height=max(2.0, 0.3 * rows + 0.5), sharex=True, sharey=False, left_in=1.1,
                        wspace=0.45)
    color = colors(results.frontend_names)
    for ax, fe in zip(axes, fes, strict=True):
        shares = sorted(fe.pod_share.items(), key=lambda kv: kv[1])
        labels = [_short_pod(p) for p, _ in shares]
        values = [100 * s for _, s in shares]
        ax.barh(labels, values, color=color[fe.name])
        for y, v in enumerate(values):
            ax.annotate(f"{v:.1f}%", xy=(v, y), xytext=(2, 0), textcoords="offset points", va="center", fontsize=8)
        n = initial_pods(phase_frames(results, fe.name)[1])
        if n:
            ax.axvline(100 / n, color="#444", linestyle="--", linewidth=1, label=f"equal share of {n} pods")
            ax.legend(loc="lower right", fontsize=8)
        _style(ax, fe.name)
        ax.set_xlabel("share of ok responses (%)")
        ax.tick_params(axis="y", labelsize=8)
    return _save(fig, out_dir, "pod_share", "Request share per pod",
                 "Share of successful responses served by each pod (x-pod header), all repeats at the first rate. "
                 "Pods started during the run (replacements) naturally have smaller shares.")


def _short_pod(name: str) -> str:
    """web-5d5e7f6e-ftb9q -> web-…ftb9q: the template hash is the same for every pod of a phase."""
    parts = name.split("-")
    return f"{parts[0]}-…{parts[-1]}" if len(parts) >= 3 else name


def queue_and_endpoints(results: Results, out_dir: Path) -> Plot | str:
    names = shown_frontends(results)
    ts_cols = set(results.timeseries.columns)
    queue_cols = [c for c in ("queue_len", "in_flight") if c in ts_cols]
    ep_cols = [c for c in ("ready_endpoints", "synced_endpoints") if c in ts_cols]
    if not names or not (queue_cols or ep_cols):
        return "queue and endpoints: the front ends' counters were not sampled (no queue_len/synced_endpoints)"
    fig, axes = new_figure(len(names), sharey=False)
    for ax, name in zip(axes, names, strict=True):
        ts, ev = phase_frames(results, name)
        _style(ax, name)
        _queue_lines(ax, ts, queue_cols)
        if ep_cols:
            _endpoint_lines(ax.twinx(), ts, ep_cols)
        _mark_events(ax, timeline_events(ev), label=False)
    axes[-1].set_xlabel("time since load start (s)")
    missing = {"queue_len", "in_flight", "ready_endpoints", "synced_endpoints"} - ts_cols
    note = f" Not sampled in this run: {', '.join(sorted(missing))}." if missing else ""
    return _save(fig, out_dir, "queue_and_endpoints", "Front-end queue and endpoints",
                 "Left axis: requests waiting in the front end's own queue (an L7 proxy's; random DNAT has none) "
                 "and requests in flight through it, sampled every 100 ms. Right axis: endpoints the controller "
                 "considers ready and endpoints the front end has synced (they lag by the sync delay)."
                 + note + " " + scope_note(results))


def _queue_lines(ax: Axes, ts: pd.DataFrame, cols: list[str]) -> None:
    styles = {"queue_len": ("queue length", "#d62728", "-"), "in_flight": ("in flight", "#1f77b4", "-")}
    for col in cols:
        if ts[col].notna().any():
            label, color, style = styles[col]
            ax.step(ts["t_s"], ts[col], where="post", color=color, linestyle=style, linewidth=1.1, label=label)
    ax.set_ylabel("requests")
    top = np.nanmax(ts[cols].to_numpy(dtype=float)) if len(ts) and ts[cols].notna().any().any() else 0.0
    ax.set_ylim(0, max(1.0, top * 1.1))  # an always-empty queue shows as a flat line at 0, not a blown-up axis
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="upper left", fontsize=8)


def _endpoint_lines(ax: Axes, ts: pd.DataFrame, cols: list[str]) -> None:
    styles = {"ready_endpoints": ("ready endpoints", "#2ca02c", "--"),
              "synced_endpoints": ("synced endpoints", "#000000", ":")}
    for col in cols:
        if ts[col].notna().any():
            label, color, style = styles[col]
            ax.step(ts["t_s"], ts[col], where="post", color=color, linestyle=style, linewidth=1.4, label=label)
    top = np.nanmax(ts[cols].to_numpy(dtype=float)) if len(ts) and ts[cols].notna().any().any() else 1.0
    ax.set_ylim(0, top + 1)
    ax.set_ylabel("endpoints")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="upper right", fontsize=8)


def failover_bars(results: Results, out_dir: Path) -> Plot | str:
    fes = [f for f in results.frontends if f.failover]
    if not fes:
        return "failover: no timeline events fired in this run, so nothing failed over"
    events = list(dict.fromkeys(e.event for f in fes for e in f.failover))
    fig, axes = new_figure(1, 3, height=3.0, sharex=False, bottom_in=1.0, wspace=0.3)
    color = colors(results.frontend_names)
    width = 0.7 / len(events)
    panels: tuple[tuple[str, Callable[[float | None], float], Callable[[float | None], str]], ...] = (
        ("lost requests", lambda v: v or 0.0, lambda v: f"{v:.0f}"),
        ("error window (s)", lambda v: v or 0.0, lambda v: f"{v:.2f}"),
        ("recovery (s)", lambda v: 0.0 if v is None else v, lambda v: "never" if v is None else f"{v:.2f}"))
    for ax, (title, height, label) in zip(axes, panels, strict=True):
        _style(ax, title)
        for j, event in enumerate(events):
            for i, fe in enumerate(fes):
                mine = [e for e in fe.failover if e.event == event]
                if not mine:
                    continue
                e = mine[0]
                raw = {"lost requests": float(e.lost), "error window (s)": e.error_window_s,
                       "recovery (s)": e.recovery_s}[title]
                x = i + (j - (len(events) - 1) / 2) * width
                ax.bar(x, height(raw), width=width * 0.9, color=color[fe.name], alpha=1.0 - 0.35 * j)
                ax.annotate(label(raw), xy=(x, height(raw)), xytext=(0, 2), textcoords="offset points",
                            ha="center", fontsize=8)
        ax.set_xticks(range(len(fes)), [f.name for f in fes], rotation=20, ha="right", fontsize=8)
        ax.set_xlim(-0.5 - 0.5 / len(fes), len(fes) - 0.5 + 0.5 / len(fes))
        ax.set_ylim(bottom=0)
        ax.margins(y=0.15)
    events_text = "; ".join(f"{e} at {_at(fes, e):.1f} s" for e in events)
    return _save(fig, out_dir, "failover", "Failover: lost requests, error window, recovery",
                 f"Per timeline event ({events_text}). lost: requests sent between the event and recovery without "
                 "a 2xx; error window: first to last failure after the event; recovery: until every 100 ms bucket "
                 "is error-free and p99 is within 2x the pre-event p99." + (" Bars of later events are lighter."
                                                                              if len(events) > 1 else ""))


def _at(fes: Sequence[FrontendStats], event: str) -> float:
    return next((e.at_s for fe in fes for e in fe.failover if e.event == event), math.nan)


def latency_vs_rate(results: Results, out_dir: Path) -> Plot | str:
    if len(results.rates) < 2:
        return ""  # not a sweep: nothing to say
    rows = results.requests
    if not len(rows):
        return "latency vs rate: no rows in requests.parquet"
    fig, axes = new_figure(1, 2, height=3.4, sharex=True)
    color = colors(results.frontend_names)
    ok = is_ok(rows)
    for name in results.frontend_names:
        points = []
        for rate in results.rates:
            mine = phase_mask(rows, name, rate)
            lat = rows.loc[mine & ok, "latency_s"].to_numpy(dtype=float)
            n = int(mine.sum())
            if n:
                p50, p99 = (np.quantile(lat, [0.5, 0.99]) * 1e3) if lat.size else (math.nan, math.nan)
                points.append((rate, p50, p99, 100.0 * (n - lat.size) / n))
        if not points:
            continue
        r, p50, p99, err = (np.array(c) for c in zip(*points, strict=True))
        axes[0].plot(r, p99, marker="o", color=color[name], label=f"{name} p99")
        axes[0].plot(r, p50, marker=".", color=color[name], alpha=0.5, linestyle="--", label=f"{name} p50")
        axes[1].plot(r, err, marker="o", color=color[name], label=name)
    _style(axes[0], "latency of ok requests")
    axes[0].set_yscale("log")
    axes[0].set_ylabel("ms")
    _style(axes[1], "failed requests")
    axes[1].set_ylabel("% of requests")
    for ax in axes:
        ax.set_xlabel("offered rate (rps)")
        ax.legend(fontsize=8)
    return _save(fig, out_dir, "latency_vs_rate", "Latency and errors against the offered rate",
                 "Every rate of the sweep, repeats merged; percentiles from the raw rows.")
