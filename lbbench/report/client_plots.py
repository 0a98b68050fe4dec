"""Figures of what the clients got over time and per pod, successes and failures kept apart.

A failed request is often fast (a refused connection answers in microseconds), so mixing failures
into a latency line makes an outage look like an improvement. Here the latency lines are of
successful requests only, and every failed request is a separate red mark at the time the
client gave up; throughput shows ok and failed requests per second; per-pod latency names a
slow pod.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from lbbench.report.loader import Results, first_repeat, phase_mask
from lbbench.report.plotkit import (
    Plot,
    colors,
    empty,
    log_ms,
    mark_events,
    new_figure,
    phase_frames,
    save,
    scope_note,
    shown_frontends,
    style,
    timeline_events,
)
from lbbench.results.files import BUCKET_S, is_ok


def _rows(results: Results, name: str) -> pd.DataFrame:
    rows = results.requests
    if not len(rows):
        return rows
    return rows.loc[phase_mask(rows, name, results.first_rate, first_repeat(results, name))]


def latency_over_time(results: Results, out_dir: Path) -> Plot | str:
    names = shown_frontends(results)
    if not names or not len(results.requests):
        return "latency over time: no request rows in this results folder"
    fig, axes = new_figure(len(names), sharey=True)
    color = colors(results.frontend_names)
    for ax, name in zip(axes, names, strict=True):
        rows = _rows(results, name)
        style(ax, name)
        ok = rows.loc[is_ok(rows)] if len(rows) else rows
        if len(ok):
            g = ok.assign(b=(ok["intended_s"] // BUCKET_S) * BUCKET_S).groupby("b")["latency_s"]
            ax.plot(g.quantile(0.99).index, g.quantile(0.99) * 1e3, color=color[name], label="p99 (ok)", linewidth=1.4)
            ax.plot(g.quantile(0.5).index, g.quantile(0.5) * 1e3, color=color[name], label="p50 (ok)", linewidth=1,
                    alpha=0.55)
        failed = rows.loc[~is_ok(rows)] if len(rows) else rows
        if len(failed):
            ax.scatter(failed["intended_s"], np.maximum(failed["latency_s"].to_numpy(dtype=float) * 1e3, 1e-3),
                       marker="x", s=10, color="#d62728", linewidths=0.8, label=f"failed ({len(failed):,})")
        if len(ok) or len(failed):
            log_ms(ax)
            ax.legend(loc="upper left", fontsize=8)
        else:
            empty(ax, "no requests")
        ax.set_ylabel("latency (ms)")
        mark_events(ax, timeline_events(phase_frames(results, name)[1]))
    axes[-1].set_xlabel("time since load start (s), by intended send time; 100 ms buckets")
    caption = ("Lines: p50 and p99 of successful requests per 100 ms bucket. Red x: each failed request, at the "
               "time the client gave up (a refused connection fails fast: it is not a fast answer). ")
    return save(fig, out_dir, "latency_over_time", "Latency over time (successes; failures marked)",
                caption + scope_note(results))


def throughput_over_time(results: Results, out_dir: Path) -> Plot | str:
    names = shown_frontends(results)
    if not names or "ok" not in results.timeseries.columns:
        return "throughput over time: no time series in this results folder"
    fig, axes = new_figure(len(names), sharey=True)
    for ax, name in zip(axes, names, strict=True):
        ts, ev = phase_frames(results, name)
        style(ax, name)
        if len(ts):
            t = ts["t_s"].to_numpy(dtype=float)
            ax.step(t, ts["ok"].to_numpy(dtype=float) / BUCKET_S, where="post", color="#2a9d8f", label="ok / s")
            ax.step(t, ts["errors"].to_numpy(dtype=float) / BUCKET_S, where="post", color="#d62728",
                    label="failed / s")
            ax.legend(loc="upper left", fontsize=8)
        else:
            empty(ax, "no requests")
        ax.set_ylabel("requests / s")
        ax.set_ylim(bottom=0)
        mark_events(ax, timeline_events(ev))
    axes[-1].set_xlabel("time since load start (s), by intended send time; 100 ms buckets")
    return save(fig, out_dir, "throughput_over_time", "Throughput over time: ok and failed",
                "Successful and failed requests per second in each 100 ms bucket. " + scope_note(results))


def per_pod_latency(results: Results, out_dir: Path) -> Plot | str:
    names = shown_frontends(results)
    rows = results.requests
    if not names or not len(rows) or "pod" not in rows.columns:
        return "per-pod latency: no pod names in the responses (x-pod header)"
    fig, axes = new_figure(1, len(names), height=2.6, sharex=False, left_in=1.3, wspace=0.5, bottom_in=0.7)
    color = colors(results.frontend_names)
    for ax, name in zip(axes, names, strict=True):
        mine = rows.loc[phase_mask(rows, name, results.first_rate)]
        ok = mine.loc[is_ok(mine) & (mine["pod"] != "")]
        style(ax, name)
        if not len(ok):
            empty(ax, "no successful requests")
            continue
        g = ok.groupby("pod")["latency_s"]
        p50, p99 = g.quantile(0.5) * 1e3, g.quantile(0.99) * 1e3
        order = p99.sort_values().index
        y = np.arange(len(order))
        ax.hlines(y, p50[order], p99[order], color=color[name], linewidth=2)
        ax.plot(p50[order], y, "o", color=color[name], markersize=4, label="p50")
        ax.plot(p99[order], y, "s", color="#222", markersize=4, label="p99")
        ax.set_yticks(y, [_short(p) for p in order], fontsize=7)
        log_ms(ax, "x")
        ax.set_xlabel("latency of ok requests (ms)", fontsize=8)
    axes[0].legend(loc="lower right", fontsize=7)
    return save(fig, out_dir, "per_pod_latency", "Latency per pod",
                "p50 (dot) to p99 (square) of each pod's successful requests, all repeats at the first rate: "
                "a slow pod stands out at the top.")


def _short(name: str) -> str:
    parts = str(name).split("-")
    return f"{parts[0]}-…{parts[-1]}" if len(parts) >= 3 else str(name)
