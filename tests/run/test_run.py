"""`lbbench run` end to end, as a user runs it: real cluster, front ends, load, results folder."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pandas as pd
import psutil
import pytest

from lbbench.config.parse import load_config
from lbbench.frontends.registry import unavailable_reason
from lbbench.load.schedule import build_schedule
from lbbench.load.spec import LoadSpec
from lbbench.model.addresses import HostPort
from lbbench.system.compiled import hot_paths_label
from lbbench.system.procs import lbbench_argv

pytestmark = pytest.mark.slow

CONFIG = """
[cluster]
nodes = 2
node_ip_base = {base}
service_cidr = "127.{svc}.0.0/16"
ingress_ip = "127.{svc}.1.1"
[[deployments]]
name = "web"
replicas = 4
[deployments.template]
service = "exp:5ms"
[deployments.template.readiness]
period = "50ms"
[[services]]
name = "web"
selector = {{ app = "web" }}
[[ingresses]]
name = "web"
[[ingresses.rules]]
service = "web"
[load]
rate = 200
arrivals = "poisson"
connections = "close"
[proxy]
maxconn = 1
queue_timeout = "5s"
[[events]]
at = "{kill_at}"
action = "kill_pod"
target = "deployment/web"
index = 0
[run]
duration = "{duration}"
seed = 11
frontends = [{frontends}]
endpoint_sync_delay = "1s"
restart_delay = "300ms"
warmup = "300ms"
"""


def write_config(tmp_path: Path, frontends: list[str], duration: str = "5s", kill_at: str = "2s",
                 base: int = 40) -> Path:
    path = tmp_path / "e2e.toml"
    path.write_text(CONFIG.format(base=base, svc=base + 60, kill_at=kill_at, duration=duration,
                                  frontends=", ".join(f'"{f}"' for f in frontends)))
    return path


def test_two_frontends_end_to_end(tmp_path: Path) -> None:
    fronts = ["userspace-dnat", "l7-proxy"]
    for f in fronts:
        if (why := unavailable_reason(f)) is not None:
            pytest.skip(f"{f}: {why}")
    config = write_config(tmp_path, fronts)
    out = tmp_path / "out"
    proc = subprocess.run([*lbbench_argv("run", str(config), "--out", str(out), "--quiet")],
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == str(out)  # the results folder is the last line
    for name in ("config.toml", "requests.parquet", "events.csv", "timeseries.parquet", "summary.json"):
        assert (out / name).exists(), name
    summary = json.loads((out / "summary.json").read_text())
    assert summary["schema"] == 1 and summary["complete"] is True
    assert {"lbbench_version", "python", "kernel", "cpu_count", "seed"} <= set(summary["metadata"])
    assert summary["metadata"]["hot_paths"] == hot_paths_label()  # which relay / response scan measured this
    rows = pd.read_parquet(out / "requests.parquet")
    cfg = load_config(config)
    expected = len(build_schedule(LoadSpec(target=HostPort("127.0.0.1", 1), rate_rps=200.0,
                                           duration_s=cfg.run.duration_s, seed=cfg.run.seed)))
    for f in fronts:
        s = summary["frontends"][f]
        assert s["requests"] == s["ok"] + sum(s["errors"].values())
        assert len(rows[rows["frontend"] == f]) == expected == s["requests"]
        assert abs(sum(s["pod_share"].values()) - 1.0) < 1e-6
        assert len(s["failover"]) == 1 and s["failover"][0]["at_s"] == pytest.approx(2.0, abs=0.05)
    # kube-proxy-style DNAT loses the requests that pick the dead pod until the sync; the proxy retries them
    assert summary["frontends"]["userspace-dnat"]["failover"][0]["lost"] > 0
    assert summary["frontends"]["l7-proxy"]["failover"][0]["lost"] <= \
        summary["frontends"]["userspace-dnat"]["failover"][0]["lost"]
    events = pd.read_csv(out / "events.csv")
    assert {"at_s", "kind", "target", "detail", "frontend"} <= set(events.columns)
    assert set(events["frontend"]) == set(fronts)


def start_run(tmp_path: Path, frontends: list[str], base: int) -> tuple[subprocess.Popen[str], Path]:
    config = write_config(tmp_path, frontends, duration="30s", kill_at="20s", base=base)
    out = tmp_path / "out"
    proc = subprocess.Popen(lbbench_argv("run", str(config), "--out", str(out)), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    assert proc.stderr is not None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if "load_started" in line:
            return proc, out
        if not line and proc.poll() is not None:
            break
    proc.kill()
    raise AssertionError(f"the run never started its load (rc={proc.poll()})")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["sigint", "sigterm"])
def test_abort_writes_partial_results(tmp_path: Path, sig: int) -> None:
    proc, out = start_run(tmp_path, ["userspace-dnat"], base=44)
    time.sleep(2.0)
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode != 0
    assert "Traceback" not in stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["complete"] is False
    rows = pd.read_parquet(out / "requests.parquet")
    assert len(rows) > 100  # what was measured before the signal is kept
    assert rows["intended_s"].max() < 30.0
    entry = summary["frontends"]["userspace-dnat"]
    assert rows["intended_s"].max() <= entry["ran_s"] < 30.0  # rates over the time the load ran, not 30 s
    assert entry["achieved_rps"] == pytest.approx(len(rows) / entry["ran_s"])


def descendants(pid: int) -> list[int]:
    try:
        return [p.pid for p in psutil.Process(pid).children(recursive=True)]
    except psutil.Error:
        return []


@pytest.mark.parametrize("frontend", ["userspace-dnat", "l7-proxy", "kernel-nftables"])
def test_sigkill_of_run_leaves_no_process(tmp_path: Path, frontend: str) -> None:
    if frontend != "kernel-nftables" and (why := unavailable_reason(frontend)) is not None:
        pytest.skip(f"{frontend}: {why}")
    from lbbench.system.netns import netns_unavailable_reason

    if frontend == "kernel-nftables" and (why := netns_unavailable_reason()) is not None:
        pytest.skip(f"kernel-nftables: {why}")
    proc, _ = start_run(tmp_path, [frontend], base=48)
    kids = descendants(proc.pid)
    assert len(kids) >= 6  # guard, pods, front end, generator workers
    proc.kill()
    proc.wait(10)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()
    proc.stderr.close()
    deadline = time.monotonic() + 2.0
    alive = kids
    while time.monotonic() < deadline and alive:
        alive = [p for p in kids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
        time.sleep(0.05)
    names = []
    for p in alive:
        try:
            names.append(" ".join(psutil.Process(p).cmdline())[:120])
            psutil.Process(p).kill()
        except psutil.Error:
            pass
    assert not names, f"left behind 2 s after SIGKILL of lbbench run: {names}"
