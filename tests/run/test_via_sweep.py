"""`[load] via` as a list: one phase per access path, each reaching the pods through its own entrypoint."""

from __future__ import annotations

import json
import random
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from lbbench.config.parse import load_config
from lbbench.frontends.registry import unavailable_reason
from lbbench.run.experiment import phase_keys
from lbbench.system.procs import lbbench_argv

PATHS = ("ClusterIP", "NodePort", "LoadBalancer")

CONFIG = """
[cluster]
nodes = 2
node_ip_base = {base}
service_cidr = "127.{svc}.0.0/16"
ingress_ip = "127.{svc}.1.1"
[[deployments]]
name = "web"
replicas = 2
[deployments.template]
service = "exp:5ms"
[deployments.template.readiness]
period = "50ms"
[[services]]
name = "web"
selector = {{ app = "web" }}
port = 8080
type = "LoadBalancer"
nodePort = 30080
[[ingresses]]
name = "web"
[[ingresses.rules]]
service = "web"
[load]
rate = 40
connections = "close"
via = ["ClusterIP", "NodePort", "LoadBalancer"]
[run]
duration = "1.5s"
warmup = "200ms"
seed = 3
frontends = [{frontends}]
"""


def write_config(tmp_path: Path, frontends: list[str]) -> Path:
    base = random.randint(20, 70)  # own address block: no clash with a concurrent run
    path = tmp_path / "via.toml"
    path.write_text(CONFIG.format(base=base, svc=base + 90,
                                  frontends=", ".join(f'"{f}"' for f in frontends)))
    return path


def test_a_sweep_has_a_phase_per_path_and_l7_once_through_its_ingress(tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path, ["userspace-dnat", "l7-proxy"]))
    keys = phase_keys(config, ["userspace-dnat", "l7-proxy"])
    assert [(k.series, k.access_path(config)) for k in keys] == [
        ("userspace-dnat via ClusterIP", "ClusterIP"), ("l7-proxy via Ingress", "ClusterIP"),
        ("userspace-dnat via NodePort", "NodePort"), ("userspace-dnat via LoadBalancer", "LoadBalancer")]


def test_a_single_path_keeps_the_front_end_names(tmp_path: Path) -> None:
    path = write_config(tmp_path, ["userspace-dnat"])
    path.write_text(path.read_text().replace('via = ["ClusterIP", "NodePort", "LoadBalancer"]', 'via = "NodePort"'))
    config = load_config(path)
    assert [(k.series, k.via, k.access_path(config)) for k in phase_keys(config, ["userspace-dnat"])] == [
        ("userspace-dnat", "", "NodePort")]


@pytest.mark.slow
def test_via_sweep_end_to_end(tmp_path: Path) -> None:
    if (why := unavailable_reason("userspace-dnat")) is not None:
        pytest.skip(f"userspace-dnat: {why}")
    config = write_config(tmp_path, ["userspace-dnat"])
    out = tmp_path / "out"
    proc = subprocess.run(lbbench_argv("run", str(config), "--out", str(out), "--quiet"),
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["config"]["load"]["via"] == list(PATHS)
    phases = {p["via"]: p for p in summary["phases"]}
    assert list(phases) == list(PATHS)
    rows = pd.read_parquet(out / "requests.parquet")
    for via, p in phases.items():
        name = f"userspace-dnat via {via}"
        assert p["frontend"] == name and summary["frontends"][name]["via"] == via
        mine = rows[rows["frontend"] == name]
        assert p["requests"] == len(mine) > 0 and p["ok"] == p["requests"]
        assert mine["pod"].astype(str).str.startswith("web-").all() and mine["pod"].nunique() == 2
    # each path's client went to its own entrypoint: the ClusterIP and the LB IP by DNS name, a node's NodePort
    targets = {via: p["target"] for via, p in phases.items()}
    assert targets["ClusterIP"].startswith("web.default.svc.cluster.local -> ")
    assert targets["LoadBalancer"].startswith("web.default.lb.cluster.local -> ")
    assert targets["NodePort"].endswith(":30080")
    addrs = {t.split(" -> ")[-1] for t in targets.values()}
    assert len(addrs) == 3, targets
    report = (out / "report.md").read_text()
    assert "3 front end/access path pairs" in report
    for via in PATHS:
        assert f"userspace-dnat via {via}" in report
