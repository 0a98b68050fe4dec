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
from dataclasses import dataclass, replace
from typing import Any

import pandas as pd

from lbbench.config.schema import Config
from lbbench.model.servicetime import ServiceTime
from lbbench.results.files import is_ok
from lbbench.theory.predict import Arrivals, ModelPrediction, predict

DNAT = ("userspace-dnat", "kernel-nftables", "kernel-iptables", "ebpf-socketlb", "haproxy-tcp")
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


def judging(config: Config) -> dict[str, Any]:
    """How the report judges the run ([report] slo, [theory] tolerance, [[checks]]), for re-reporting."""
    rc = config.report
    return {"slo_s": rc.slo_s, "theory_tolerance": rc.theory_tolerance, "checks": [c.text for c in rc.checks]}


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


@dataclass(frozen=True)
class ServerMeasure:
    """What the model calls the server and its queue, as this run measured them (per successful request)."""

    proxy_slot: bool  # the server is the proxy's slot to a pod (else the pod's own slot)
    time_s: float  # mean time a request held the server
    source: str
    queue_wait_s: float | None  # mean wait in the model's queue
    p_wait: float | None  # fraction of requests that waited there longer than WAITED_MS


WAITED_MS = 0.1  # a request that got its slot within 0.1 ms did not wait: below the loop's own jitter

# the model's server and queue -> (row column of the server time, of the queue wait, what that is)
_PROXY_SLOT = ("proxy_upstream_ms", "proxy_queue_ms",
               "the proxy's backend slot, dispatch to response head (x-proxy-upstream-ms); "
               "queue: the proxy's (x-proxy-queue-ms)")
_POD_SLOT = ("service_ms", "queue_ms", "the pod's slot, its own service time (x-service-ms); "
             "queue: the pod's (x-queue-ms)")


def _column_mean(rows: pd.DataFrame, ok: pd.Series, column: str) -> float | None:
    if column not in rows.columns:
        return None
    values = rows.loc[ok, column].dropna()
    return float(values.mean()) / 1e3 if len(values) else None


def measured_server(rows: pd.DataFrame, model: str) -> ServerMeasure | None:
    """The server's mean holding time and its queue, from the rows; None if the rows do not say.

    In `shared_queue` the M/M/c server is the proxy's slot to a pod: it is held for the pod's
    service and the proxy<->pod hand-off, during which the pod is idle. lbbench's l7-proxy
    reports that time per request; other proxies do not, and then the pod's service time
    stands in (and the pod's queue, empty under maxconn = slots, says nothing of the proxy's).
    """
    ok = is_ok(rows)
    for server_col, queue_col, source in ((_PROXY_SLOT, _POD_SLOT) if model == "shared_queue" else (_POD_SLOT,)):
        time_s = _column_mean(rows, ok, server_col)
        if time_s is None:
            continue
        waits = rows.loc[ok, queue_col].dropna() if queue_col in rows.columns else pd.Series(dtype=float)
        own_queue = server_col == "proxy_upstream_ms" or model != "shared_queue"  # the queue the model describes
        return ServerMeasure(
            proxy_slot=server_col == "proxy_upstream_ms", time_s=time_s, source=source,
            queue_wait_s=float(waits.mean()) / 1e3 if own_queue and len(waits) else None,
            p_wait=float((waits > WAITED_MS).mean()) if own_queue and len(waits) else None,
        )
    return None


def outside_server_s(zero_load: Mapping[str, Any] | None, server: ServerMeasure) -> float | None:
    """The path's zero-load cost outside the model's server: client, TCP, front end."""
    zl = zero_load or {}
    key = "outside_proxy_slot_mean_s" if server.proxy_slot else "overhead_mean_s"
    value = zl.get(key)
    return float(value) if isinstance(value, int | float) else None


def _with_mean(service: ServiceTime, mean_s: float) -> ServiceTime | None:
    """The configured service distribution with the measured mean (shape kept: exp stays exp)."""
    if service.kind in ("exp", "const") and mean_s > 0:
        return replace(service, mean_s=mean_s)
    return None


def _compare(out: dict[str, Any], q: str, predicted: float | None, got: float | None) -> None:
    """predicted_<q>, measured_<q>, rel_err_<q without _s>."""
    out[f"predicted_{q}"] = predicted
    out[f"measured_{q}"] = got
    out[f"rel_err_{q.removesuffix('_s')}"] = (got - predicted) / predicted if predicted and got is not None else None


def measured_server_section(model: str, replicas: int, slots: int, service: ServiceTime, rate_rps: float,
                            arrivals: Arrivals, measured: dict[str, Any], rows: pd.DataFrame,
                            zero_load: Mapping[str, Any] | None) -> dict[str, Any]:
    """The model fed the server time this run measured, plus the path outside the server, against the run.

    The configured service time is what the pods were asked for; what the model's server was
    actually held for can be longer (a proxy's hand-off). Both comparisons are reported.
    """
    server = measured_server(rows, model)
    if server is None:
        return {}
    out: dict[str, Any] = {"server_time_s": server.time_s, "server_time_source": server.source}
    fitted = _with_mean(service, server.time_s)
    if fitted is None:
        return out
    pred = predict(replicas, slots, fitted, rate_rps, arrivals)[model]
    out["utilisation_measured_server"] = pred.utilisation
    outside = outside_server_s(zero_load, server)
    out["zero_load_outside_server_s"] = outside
    if outside is not None:
        for stat, key in (("mean", "mean_s"), ("p50", "p50_s"), ("p99", "p99_s")):
            predicted = getattr(pred, key)
            _compare(out, f"{stat}_measured_server_s", None if predicted is None else predicted + outside,
                     measured.get(stat))
    _compare(out, "queue_wait_s", pred.mean_wait_s, server.queue_wait_s)
    _compare(out, "p_wait", pred.p_wait, server.p_wait)
    return out


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
        _compare(out, key, getattr(pred, key), measured.get(stat))
    overhead = (zero_load or {}).get("overhead_mean_s")
    if overhead is not None:
        # The models know nothing of the harness's path (client, TCP, front end): add its zero-load
        # cost, measured before the load, to compare like with like.
        for stat, key in (("mean", "mean_s"), ("p50", "p50_s"), ("p99", "p99_s")):
            predicted = getattr(pred, key)
            if predicted is not None:
                _compare(out, f"{stat}_plus_path_s", predicted + overhead, measured.get(stat))
    wait = measured_wait_s(rows, zero_load) if rows is not None else None
    _compare(out, "mean_wait_s", pred.mean_wait_s, wait)
    out["zero_load_overhead_s"] = (zero_load or {}).get("overhead_mean_s")
    if rows is not None and pred.mean_s is not None:
        out.update(measured_server_section(model, replicas, w.template.slots, w.template.service, rate_rps,
                                           config.load.arrivals, measured, rows, zero_load))
    return out
