"""The report's figures: one PNG per question, drawn from a results folder's data only.

Time-series figures show one phase per front end: the first rate (summary.json's per-front-end
numbers are at that rate too) and its first repeat; captions say so when there were more.
A figure that has nothing to show returns the reason instead, and the report lists it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.axes import Axes

from lbbench.report.client_plots import latency_over_time, per_pod_latency, throughput_over_time
from lbbench.report.loader import FrontendStats, Results, phase_mask
from lbbench.report.plotkit import (
    ERROR_COLORS,
    Plot,
    PlotSet,
    colors,
    draw_cdf,
    empty,
    log_ms,
    mark_events,
    new_figure,
    ok_latencies,
    phase_frames,
    save,
    scope_note,
    shown_frontends,
    style,
    timeline_events,
)
from lbbench.report.theory_plots import theory_vs_utilisation
from lbbench.results.files import is_ok


def make_plots(results: Results, out_dir: Path) -> PlotSet:
    out_dir.mkdir(parents=True, exist_ok=True)
    plots: list[Plot] = []
    notes: list[str] = []
    makers: tuple[Callable[[Results, Path], Plot | str], ...] = (
        latency_over_time,
        throughput_over_time,
        errors_over_time,
        latency_cdf,
        pod_share,
        per_pod_latency,
        queue_and_endpoints,
        failover_bars,
        latency_vs_rate,
    )
    for make in makers:
        made = make(results, out_dir)
        if isinstance(made, Plot):
            plots.append(made)
        elif made:
            notes.append(made)
    theory = theory_vs_utilisation(results, out_dir)
    if isinstance(theory, list):
        plots.extend(theory)
    elif theory:
        notes.append(theory)
    return PlotSet(tuple(plots), tuple(notes))


# -- the figures --------------------------------------------------------------------------------------
def errors_over_time(results: Results, out_dir: Path) -> Plot | str:
    names = shown_frontends(results)
    if not names or "errors" not in results.timeseries.columns:
        return "errors over time: no time series in this results folder"
    fig, axes = new_figure(len(names), sharey=True)
    for ax, name in zip(axes, names, strict=True):
        ts, ev = phase_frames(results, name)
        style(ax, name)
        kinds = [c for c in ts.columns if c.startswith("err_") and ts[c].fillna(0).sum() > 0]
        bottom = np.zeros(len(ts))
        edges = np.append(ts["t_s"].to_numpy(dtype=float), float(ts["t_s"].max()) + 0.1) if len(ts) else None
        for col in kinds:
            values = ts[col].fillna(0).to_numpy(dtype=float)
            kind = col.removeprefix("err_")
            # one filled step patch per kind (stacked), not a rectangle per bucket: ~20x cheaper to draw
            ax.stairs(
                bottom + values,
                edges,
                baseline=bottom.copy(),
                fill=True,
                label=kind,
                color=ERROR_COLORS.get(kind, "#7f7f7f"),
            )
            bottom += values
        if kinds:
            ax.legend(loc="upper left", fontsize=8)
        else:
            empty(ax, "no errors")
        ax.set_ylabel("errors / 100 ms")
        mark_events(ax, timeline_events(ev))
    axes[-1].set_xlabel("time since load start (s), by intended send time")
    return save(
        fig,
        out_dir,
        "errors_over_time",
        "Errors over time, by kind",
        "Failed requests per 100 ms bucket, stacked by kind. " + scope_note(results),
    )


def latency_cdf(results: Results, out_dir: Path) -> Plot | str:
    names = shown_frontends(results)
    color = colors(results.frontend_names)
    curves = [(n, ok_latencies(results, n), color[n], "-") for n in names]
    if not any(c[1].size for c in curves):
        return "latency CDF: no successful requests in requests.parquet"
    fig, axes = new_figure(1, 2, height=3.6, sharex=False)
    draw_cdf(axes, curves)
    note = f"at {results.first_rate:g} rps, all repeats merged. " if len(results.rates) > 1 else ""
    return save(
        fig,
        out_dir,
        "latency_cdf",
        "Latency distribution (successful requests)",
        "Latency from the intended send time of every 2xx response; the right panel shows the tail. " + note,
    )


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
    pods = max(len(f.pod_share) for f in fes) + 1
    # at most three panels a row, so pod names and titles never run into each other at six front ends
    cols = min(3, len(fes))
    grid = -(-len(fes) // cols)
    fig, axes = new_figure(grid, cols, height=max(1.6, 0.28 * pods + 0.7), sharex=False, sharey=False,
                           left_in=1.3, bottom_in=0.6, wspace=0.75)
    fig.subplots_adjust(hspace=0.7)
    for ax in axes[len(fes):]:
        ax.set_visible(False)
    color = colors(results.frontend_names)
    for ax, fe in zip(axes[:len(fes)], fes, strict=True):  # a grid of 3 a row has spare panels at 4 or 5
        shares = sorted(with_idle_pods(fe.pod_share, phase_frames(results, fe.name)[1]).items(),
                        key=lambda kv: kv[1])
        labels = [_short_pod(p) for p, _ in shares]
        values = [100 * s for _, s in shares]
        ax.barh(labels, values, color=color[fe.name])
        for y, v in enumerate(values):
            ax.annotate(
                f"{v:.1f}%", xy=(v, y), xytext=(2, 0), textcoords="offset points", va="center", fontsize=8
            )
        n = initial_pods(phase_frames(results, fe.name)[1])
        if n:
            ax.axvline(100 / n, color="#444", linestyle="--", linewidth=1)
        style(ax, fe.name)
        ax.set_xlim(0, max(1.0, max(values)) * 1.3)
        ax.set_xlabel("share of ok responses (%)", fontsize=8)
        ax.tick_params(axis="y", labelsize=8)
    return save(
        fig,
        out_dir,
        "pod_share",
        "Request share per pod",
        "Share of successful responses served by each pod (x-pod header), all repeats at the first rate. "
        "Pods that were ready but served nothing are shown at 0%. Dashed: an equal share of the pods ready "
        "when the load started. "
        "Pods started during the run (replacements) naturally have smaller shares.",
    )


def with_idle_pods(share: dict[str, float], ev: pd.DataFrame) -> dict[str, float]:
    """The pods that served, plus every pod that was ready during the phase and served nothing (0%):
    with keep-alive through DNAT, a pod that got no connection is the finding, not a gap."""
    out = dict(share)
    if len(ev):
        for pod in ev.loc[ev["kind"] == "pod_ready", "target"].astype(str):
            out.setdefault(pod, 0.0)
    return out


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
        return (
            "queue and endpoints: the front ends' counters were not sampled (no queue_len/synced_endpoints)"
        )
    fig, axes = new_figure(len(names), sharey=False)
    for ax, name in zip(axes, names, strict=True):
        ts, ev = phase_frames(results, name)
        style(ax, name)
        has_queue = bool(queue_cols) and len(ts) > 0 and bool((ts[queue_cols].fillna(0) > 0).any().any())
        if has_queue:
            _queue_lines(ax, ts, queue_cols)
        if ep_cols:  # a front end with no queue of its own (random DNAT): endpoints on the main axis
            _endpoint_lines(ax.twinx() if has_queue else ax, ts, ep_cols)
        if not has_queue and not ep_cols:
            empty(ax, "no queue of its own and no endpoints sampled")
        mark_events(ax, timeline_events(ev), label=False)
    axes[-1].set_xlabel("time since load start (s)")
    missing = {"queue_len", "in_flight", "ready_endpoints", "synced_endpoints"} - ts_cols
    note = f" Not sampled in this run: {', '.join(sorted(missing))}." if missing else ""
    return save(
        fig,
        out_dir,
        "queue_and_endpoints",
        "Front-end queue and endpoints",
        "Left axis: requests waiting in the front end's own queue (an L7 proxy's; random DNAT has none) "
        "and requests in flight through it, sampled every 100 ms. Right axis: endpoints the controller "
        "considers ready and endpoints the front end has synced (they lag by the sync delay)."
        + note
        + " "
        + scope_note(results),
    )


def _queue_lines(ax: Axes, ts: pd.DataFrame, cols: Sequence[str]) -> None:
    styles = {"queue_len": ("queue length", "#d62728", "-"), "in_flight": ("in flight", "#1f77b4", "-")}
    for col in cols:
        if ts[col].notna().any():
            label, color, style = styles[col]
            ax.step(
                ts["t_s"], ts[col], where="post", color=color, linestyle=style, linewidth=1.1, label=label
            )
    ax.set_ylabel("requests")
    top = np.nanmax(ts[cols].to_numpy(dtype=float)) if len(ts) and ts[cols].notna().any().any() else 0.0
    ax.set_ylim(
        0, max(1.0, top * 1.1)
    )  # an always-empty queue shows as a flat line at 0, not a blown-up axis
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="upper left", fontsize=8)


def _endpoint_lines(ax: Axes, ts: pd.DataFrame, cols: Sequence[str]) -> None:
    styles = {
        "ready_endpoints": ("ready endpoints", "#2ca02c", "--"),
        "synced_endpoints": ("synced endpoints", "#000000", ":"),
    }
    for col in cols:
        if ts[col].notna().any():
            label, color, style = styles[col]
            ax.step(
                ts["t_s"], ts[col], where="post", color=color, linestyle=style, linewidth=1.4, label=label
            )
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
        ("recovery (s)", lambda v: 0.0 if v is None else v, lambda v: "never" if v is None else f"{v:.2f}"),
    )
    for ax, (title, height, label) in zip(axes, panels, strict=True):
        style(ax, title)
        for j, event in enumerate(events):
            for i, fe in enumerate(fes):
                mine = [e for e in fe.failover if e.event == event]
                if not mine:
                    continue
                e = mine[0]
                raw = {
                    "lost requests": float(e.lost),
                    "error window (s)": e.error_window_s,
                    "recovery (s)": e.recovery_s,
                }[title]
                x = i + (j - (len(events) - 1) / 2) * width
                ax.bar(x, height(raw), width=width * 0.9, color=color[fe.name], alpha=1.0 - 0.35 * j)
                ax.annotate(
                    label(raw),
                    xy=(x, height(raw)),
                    xytext=(0, 2),
                    textcoords="offset points",
                    ha="center",
                    fontsize=8,
                )
        ax.set_xticks(range(len(fes)), [f.name for f in fes], rotation=20, ha="right", fontsize=8)
        ax.set_xlim(-0.5 - 0.5 / len(fes), len(fes) - 0.5 + 0.5 / len(fes))
        ax.set_ylim(bottom=0)
        ax.margins(y=0.15)
    events_text = "; ".join(f"{e} at {_at(fes, e):.1f} s" for e in events)
    return save(
        fig,
        out_dir,
        "failover",
        "Failover: lost requests, error window, recovery",
        f"Per timeline event ({events_text}). lost: requests sent between the event and recovery without "
        "a 2xx; error window: first to last failure after the event; recovery: until every 100 ms bucket "
        "is error-free and p99 is within 2x the pre-event p99."
        + (" Bars of later events are lighter." if len(events) > 1 else ""),
    )


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
    style(axes[0], "latency of ok requests")
    log_ms(axes[0])
    axes[0].set_ylabel("ms")
    style(axes[1], "failed requests")
    axes[1].set_ylabel("% of requests")
    for ax in axes:
        ax.set_xlabel("offered rate (rps)")
        ax.legend(fontsize=8)
    return save(
        fig,
        out_dir,
        "latency_vs_rate",
        "Latency and errors against the offered rate",
        "Every rate of the sweep, repeats merged; percentiles from the raw rows.",
    )
