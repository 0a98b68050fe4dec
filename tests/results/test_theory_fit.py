"""The model fed the server time a run measured: which server, which queue, and the arithmetic.

A real `lbbench run` (pods, l7-proxy with maxconn = slots, userspace-dnat) supplies the rows;
the assertions recompute each number of the theory section from those rows and the models.
"""

from __future__ import annotations

import json
import math
import random
import subprocess
from typing import Any

import numpy as np
import pandas as pd
import pytest

from lbbench.model.servicetime import ServiceTime
from lbbench.results.theory_fit import WAITED_MS, measured_server
from lbbench.run.zeroload import trimmed_mean
from lbbench.system.procs import lbbench_argv
from lbbench.theory.predict import predict

CONFIG = """
[cluster]
nodes = 1
node_ip_base = {base}
service_cidr = "127.{svc}.0.0/16"
ingress_ip = "127.{svc}.1.1"
[[deployments]]
name = "web"
replicas = 2
[deployments.template]
service = "exp:5ms"
slots = 1
[[services]]
name = "web"
selector = {{ app = "web" }}
[[ingresses]]
name = "web"
[[ingresses.rules]]
service = "web"
[load]
utilisation = 0.6
connections = "close"
[proxy]
maxconn = 1
balance = "round-robin"
[run]
seed = 11
duration = "4s"
warmup = "300ms"
frontends = ["l7-proxy", "userspace-dnat"]
"""


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], pd.DataFrame]:
    tmp = tmp_path_factory.mktemp("fit")
    base = random.randint(20, 70)  # own address block: no clash with a concurrent run
    cfg = tmp / "fit.toml"
    cfg.write_text(CONFIG.format(base=base, svc=base + 120))
    out = tmp / "out"
    proc = subprocess.run(lbbench_argv("run", str(cfg), "--out", str(out), "--quiet", "--no-netns"),
                          capture_output=True, text=True, timeout=180, check=False)
    assert proc.returncode == 0, proc.stderr
    return json.loads((out / "summary.json").read_text()), pd.read_parquet(out / "requests.parquet")


def _ok(rows: pd.DataFrame, frontend: str) -> pd.DataFrame:
    mine = rows.loc[rows["frontend"] == frontend]
    return mine.loc[(mine["error"] == "") & (mine["status"] == 200)]


def _expected(theory: dict[str, Any], model: str, rate: float, outside: float) -> dict[str, float]:
    pred = predict(2, 1, ServiceTime("exp", theory["server_time_s"]), rate)[model]
    assert pred.mean_s is not None and pred.p99_s is not None
    return {"predicted_mean_measured_server_s": pred.mean_s + outside,
            "predicted_p99_measured_server_s": pred.p99_s + outside,
            "predicted_queue_wait_s": pred.mean_wait_s or 0.0, "predicted_p_wait": pred.p_wait or 0.0,
            "utilisation_measured_server": pred.utilisation}


@pytest.mark.slow
def test_queueing_proxy_model_uses_the_proxy_slot_and_queue(run: tuple[dict[str, Any], pd.DataFrame]) -> None:
    summary, rows = run
    fe = summary["frontends"]["l7-proxy"]
    theory, zero_load = fe["theory"], fe["zero_load"]
    ok = _ok(rows, "l7-proxy")
    assert theory["model"] == "shared_queue" and "x-proxy-upstream-ms" in theory["server_time_source"]
    # The slot is held for the pod's service and the hand-off: longer than the pod's own time, on average.
    assert math.isclose(theory["server_time_s"], ok["proxy_upstream_ms"].mean() / 1e3, rel_tol=1e-9)
    assert theory["server_time_s"] > ok["service_ms"].mean() / 1e3
    assert theory["utilisation_measured_server"] > theory["utilisation"]
    # Measured in the proxy's queue, not the pods' (which is empty under maxconn = slots).
    assert math.isclose(theory["measured_queue_wait_s"], ok["proxy_queue_ms"].mean() / 1e3, rel_tol=1e-9)
    assert theory["measured_p_wait"] == pytest.approx(float((ok["proxy_queue_ms"] > WAITED_MS).mean()))
    # (a pod preempted between arrival and its free slot can show a few ms now and then: a share, not a max)
    assert (ok["queue_ms"] > 1.0).mean() < 0.01
    assert ok["queue_ms"].mean() < 0.1 * ok["proxy_queue_ms"].mean()
    # Outside the slot at zero load: the client <-> proxy legs only, less than the whole path.
    outside = zero_load["outside_proxy_slot_mean_s"]
    assert 0 < outside < zero_load["overhead_mean_s"] <= zero_load["overhead_max_s"]
    assert theory["zero_load_outside_server_s"] == outside
    rate = summary["phases"][0]["rate_rps"]
    for key, value in _expected(theory, "shared_queue", rate, outside).items():
        assert theory[key] == pytest.approx(value, rel=1e-9), key
    # Hypervisor steal was sampled during the load: a fraction, its worst second no less than its mean.
    host = summary["phases"][0]["host_cpu"]
    assert 0.0 <= host["steal_fraction"] <= host["steal_max_1s"] <= 1.0


@pytest.mark.slow
def test_dnat_model_uses_the_pod_slot_and_queue(run: tuple[dict[str, Any], pd.DataFrame]) -> None:
    summary, rows = run
    fe = summary["frontends"]["userspace-dnat"]
    theory, zero_load = fe["theory"], fe["zero_load"]
    ok = _ok(rows, "userspace-dnat")
    assert theory["model"] == "random_split" and "x-service-ms" in theory["server_time_source"]
    assert math.isclose(theory["server_time_s"], ok["service_ms"].mean() / 1e3, rel_tol=1e-9)
    assert math.isclose(theory["measured_queue_wait_s"], ok["queue_ms"].mean() / 1e3, rel_tol=1e-9)
    assert ok["proxy_upstream_ms"].isna().all() and zero_load["outside_proxy_slot_mean_s"] is None
    rate = summary["phases"][1]["rate_rps"]
    for key, value in _expected(theory, "random_split", rate, zero_load["overhead_mean_s"]).items():
        assert theory[key] == pytest.approx(value, rel=1e-9), key


def test_a_proxy_that_does_not_report_its_slot_falls_back_to_the_pod() -> None:
    """HAProxy says nothing of its slot: the pods' service time stands in, and no queue is claimed."""
    rng = np.random.default_rng(1)
    n = 400
    rows = pd.DataFrame({"error": [""] * n, "status": [200] * n, "latency_s": rng.exponential(0.02, n),
                         "service_ms": rng.exponential(10.0, n), "queue_ms": np.full(n, 0.01),
                         "proxy_queue_ms": np.nan, "proxy_upstream_ms": np.nan})
    server = measured_server(rows, "shared_queue")
    assert server is not None and not server.proxy_slot
    assert server.time_s == pytest.approx(rows["service_ms"].mean() / 1e3)
    assert server.queue_wait_s is None and server.p_wait is None
    # ... while failed requests never count, and a proxy that does report is believed.
    rows["proxy_upstream_ms"] = rows["service_ms"] + 0.5
    rows["proxy_queue_ms"] = np.where(np.arange(n) % 2 == 0, 3.0, 0.0)
    rows.loc[0, "status"] = 503
    rows.loc[0, "proxy_upstream_ms"] = 1e6
    server = measured_server(rows, "shared_queue")
    assert server is not None and server.proxy_slot
    assert server.time_s == pytest.approx(rows["proxy_upstream_ms"].iloc[1:].mean() / 1e3)
    assert server.p_wait == pytest.approx(199 / 399) and server.queue_wait_s == pytest.approx(3.0 * 199 / 399 / 1e3)


def test_zero_load_mean_is_not_one_lost_syn() -> None:
    """39 probes at 1 ms and one that waited out a 1 s SYN retransmit: the path costs 1 ms."""
    assert trimmed_mean([0.001] * 39 + [1.0]) == pytest.approx(0.001)
    assert trimmed_mean([0.001] * 19 + [1.0]) == pytest.approx(0.001)  # 20 probes: still one dropped
    assert trimmed_mean([0.002, 0.004]) == pytest.approx(0.003)  # too few to drop any
    assert trimmed_mean([]) is None
