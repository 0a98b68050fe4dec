"""Which queueing model a front end should match in a given run, and how close it came.

Random DNAT per request (connections `close`) splits the Poisson stream into N independent
queues: `random_split`. A queueing proxy whose per-pod maxconn equals the pod's slots holds
one central FIFO in front of N*c servers: `shared_queue` (M/M/c, Erlang C). Without a
per-pod limit, the proxy's balancing decides: round robin -> `round_robin`, random ->
`random_split`, p2c -> `p2c`. Where nothing fits (keep-alive through DNAT, closed loop, rate
steps, several workloads), the reason is given instead of a number.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd

from lbbench.config import Config
from lbbench.results import is_ok
from lbbench.theory import ModelPrediction, predict

DNAT = ("userspace-dnat", "kernel-nftables", "kernel-iptables", "haproxy-tcp")
QUEUEING = ("l7-proxy", "haproxy")
BALANCE_MODEL = {"round-robin": "round_robin", "random": "random_split", "p2c": "p2c"}


def matching_model(config: Config, frontend: str) -> tuple[str | None, str]:
    """(model key, why) or (None, why not)."""
    lc = config.load
    if lc.closed_loop_users:
        return None, "closed loop: arrivals depend on responses, no open-queue model applies"
    if lc.steps:
        return None, "the rate changes over time (steps): the models are for a steady state"
    workloads = config.backing_workloads(config.service(lc.service))
    if len(workloads) != 1:
        return None, "the Service selects several workloads with different templates"
    slots = workloads[0].template.slots
    if frontend in DNAT:
        if lc.connections.kind != "close":
            return None, (
                "keep-alive through DNAT: a pod is chosen per connection, not per request, so the split is not Poisson"
            )
        return "random_split", "random DNAT per new connection, one request per connection"
    if frontend in QUEUEING:
        mc = config.proxy.maxconn
        if mc == slots:
            return "shared_queue", f"maxconn {mc} = pod slots: one central FIFO queue in the proxy (M/M/c)"
        if mc == 0 and config.proxy.balance in BALANCE_MODEL and frontend == "l7-proxy":
            model = BALANCE_MODEL[config.proxy.balance]
            return model, f"no per-pod limit: requests go straight to pods by {config.proxy.balance}"
        return None, f"maxconn {mc} with {slots} slot(s) per pod and balance {config.proxy.balance}: no model"
    return None, f"{frontend} has no request queue model (requests beyond max_conns are not queued centrally)"


def theory_inputs(config: Config) -> dict[str, Any] | None:
    """What the models need, kept in summary.json so reports can draw theory curves from files alone."""
    workloads = config.backing_workloads(config.service(config.load.service))
    if len(workloads) != 1:
        return None
    w = workloads[0]
    return {"pods": config.cluster.nodes if w.kind == "DaemonSet" else w.replicas, "slots": w.template.slots,
            "service": str(w.template.service), "arrivals": config.load.arrivals,
            "models": {fe: matching_model(config, fe)[0] for fe in config.run.frontends}}


def measured_wait_s(rows: pd.DataFrame, zero_load: Mapping[str, Any] | None) -> float | None:
    """Mean time a successful request spent waiting anywhere (pod queue, proxy queue, client pool).

    latency - the pod's own service time - the path's zero-load overhead: what is left is
    waiting, wherever it happened, and compares directly with a model's mean wait.
    """
    overhead = (zero_load or {}).get("overhead_mean_s")
    if overhead is None or "service_ms" not in rows.columns:
        return None
    ok = is_ok(rows) & rows["service_ms"].notna()
    if not ok.any():
        return None
    return float((rows.loc[ok, "latency_s"] - rows.loc[ok, "service_ms"] / 1e3).mean() - overhead)


def theory_section(config: Config, frontend: str, rate_rps: float, measured: dict[str, Any],
                   rows: pd.DataFrame | None = None, zero_load: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Measured vs predicted for one front end at one rate; `measured` is a latency_s dict."""
    model, why = matching_model(config, frontend)
    if model is None:
        return {"model": None, "reason": why}
    w = config.backing_workloads(config.service(config.load.service))[0]
    replicas = config.cluster.nodes if w.kind == "DaemonSet" else w.replicas
    try:
        pred: ModelPrediction = predict(replicas, w.template.slots, w.template.service, rate_rps, config.load.arrivals)[
            model
        ]
    except ValueError as e:
        return {"model": None, "reason": str(e)}
    out: dict[str, Any] = {
        "model": model,
        "why": why,
        "exact": pred.exact,
        "note": pred.note,
        "utilisation": pred.utilisation,
    }
    for stat, key in (("mean", "mean_s"), ("p50", "p50_s"), ("p99", "p99_s")):
        predicted = getattr(pred, key)
        got = measured.get(stat)
        out[f"predicted_{key}"] = predicted
        out[f"measured_{key}"] = got
        out[f"rel_err_{stat}"] = (got - predicted) / predicted if predicted and got is not None else None
    overhead = (zero_load or {}).get("overhead_mean_s")
    if overhead is not None:
        # The models know nothing of the harness's path (client, TCP, front end): add its zero-load
        # cost, measured before the load, to compare like with like.
        for stat, key in (("mean", "mean_s"), ("p50", "p50_s"), ("p99", "p99_s")):
            predicted, got = getattr(pred, key), measured.get(stat)
            if predicted is None:
                continue
            adjusted = predicted + overhead
            q = f"{stat}_plus_path_s"
            out[f"predicted_{q}"] = adjusted
            out[f"measured_{q}"] = got
            out[f"rel_err_{stat}_plus_path"] = (got - adjusted) / adjusted if got is not None else None
    wait = measured_wait_s(rows, zero_load) if rows is not None else None
    out["predicted_mean_wait_s"] = pred.mean_wait_s
    out["measured_mean_wait_s"] = wait
    out["rel_err_mean_wait"] = ((wait - pred.mean_wait_s) / pred.mean_wait_s
                                if wait is not None and pred.mean_wait_s else None)
    out["zero_load_overhead_s"] = (zero_load or {}).get("overhead_mean_s")
    return out
