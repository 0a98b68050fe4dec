"""Measured mean and p99 against utilisation, with the queueing models' curves (one figure per statistic)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from lbbench.model.servicetime import ServiceTime
from lbbench.report.loader import Results, phase_mask
from lbbench.report.plotkit import Plot, colors, log_ms, new_figure, save, style
from lbbench.results.files import is_ok
from lbbench.theory.predict import MODEL_KEYS, predict

MODEL_STYLE = {"random_split": "-", "shared_queue": "-", "round_robin": ":", "p2c": "--"}
MODEL_LABEL = {"random_split": "random split (N x M/M/1)", "shared_queue": "shared queue (M/M/c)",
               "round_robin": "round robin", "p2c": "power of two choices"}
STATS = (("mean", "mean_s", "mean response time"), ("p99", "p99_s", "p99 response time"))


def _inputs(results: Results) -> tuple[int, int, ServiceTime, Any, dict[str, str | None]] | None:
    ti = results.config.get("theory_inputs")
    if not isinstance(ti, dict):
        return None
    try:
        service = ServiceTime.parse(str(ti["service"]))
        return int(ti["pods"]), int(ti["slots"]), service, ti.get("arrivals", "poisson"), dict(ti.get("models", {}))
    except (KeyError, ValueError, TypeError):
        return None


def theory_vs_utilisation(results: Results, out_dir: Path) -> list[Plot] | str:
    if len(results.rates) < 2:
        return ""
    inputs = _inputs(results)
    if inputs is None:
        return "theory curves: the run's Service has no single workload to model"
    pods, slots, service, arrivals, models = inputs
    capacity = pods * slots / service.mean_s if service.mean_s > 0 else math.inf
    grid = np.linspace(0.05, 0.95, 46)
    curves: dict[str, dict[str, list[float]]] = {k: {s: [] for s, _, _ in STATS} for k in MODEL_KEYS}
    for rho in grid:
        pred = predict(pods, slots, service, float(rho * capacity), arrivals)
        for k in MODEL_KEYS:
            for stat, key, _ in STATS:
                v = getattr(pred[k], key)
                curves[k][stat].append(math.nan if v is None else v * 1e3)
    rows = results.requests
    ok = is_ok(rows)
    color = colors(results.frontend_names)
    # a model is drawn in the colour of the front end it is expected to match
    model_color = {m: color[fe] for fe, m in models.items() if m and fe in color}
    out: list[Plot] = []
    for stat, _, title in STATS:
        fig, axes = new_figure(1, height=3.6)
        ax = axes[0]
        for k in MODEL_KEYS:
            curve = np.array(curves[k][stat], dtype=float)
            if np.isfinite(curve).any():
                ax.plot(grid, curve, MODEL_STYLE[k], color=model_color.get(k, "0.6"),
                        linewidth=1.4 if k in model_color else 1.0, alpha=0.8, label=f"theory: {MODEL_LABEL[k]}")
        for name in results.frontend_names:
            xs, ys = [], []
            for rate in results.rates:
                lat = rows.loc[phase_mask(rows, name, rate) & ok, "latency_s"].to_numpy(dtype=float)
                if lat.size:
                    xs.append(rate / capacity)
                    ys.append((lat.mean() if stat == "mean" else float(np.quantile(lat, 0.99))) * 1e3)
            if xs:
                model = models.get(name)
                ax.plot(xs, ys, "o", color=color[name], markersize=6,
                        label=f"{name} (model: {MODEL_LABEL.get(model or '', 'none')})")
            fitted = _measured_server_points(results, name, stat, capacity)
            if fitted[0]:
                ax.plot(*fitted, "x", color=color[name], markersize=7,
                        label=f"{name}: model fed its measured server time, + path")
        style(ax, title)
        log_ms(ax)
        ax.set_xlabel(f"utilisation (offered rate / {capacity:.0f} rps capacity)")
        ax.set_ylabel("ms")
        ax.legend(fontsize=7)
        out.append(save(fig, out_dir, f"theory_{stat}_vs_utilisation", f"Measured {title} against queueing theory",
                        f"{pods} pods x {slots} slot(s), service {service}, {arrivals} arrivals. Points: successful "
                        "requests of each phase, repeats merged. Lines: the models' predictions. Crosses: the "
                        "matching model fed the server time that phase measured (e.g. a proxy's slot, which "
                        "includes the proxy<->pod hand-off), plus the path outside it at zero load."))
    return out


def _measured_server_points(results: Results, name: str, stat: str, capacity: float
                            ) -> tuple[list[float], list[float]]:
    """(utilisation, ms) of the model fed each phase's measured server time (first repeat of each rate)."""
    xs, ys = [], []
    for p in results.phases:
        if p.frontend != name or p.repeat != 0 or p.stats is None:
            continue
        for t in p.stats.theory:
            v = t.get(f"predicted_{stat}_measured_server_s")
            if isinstance(v, int | float):
                xs.append(p.rate_rps / capacity)
                ys.append(float(v) * 1e3)
    return xs, ys
