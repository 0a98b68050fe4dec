"""Graceful termination (issue 14): with its only pod terminating, a Service keeps serving through
kube-proxy's terminating-endpoint fallback; without the fallback, requests fail (the test can fail)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pandas as pd
import pytest
from helpers.paths import REPO

from lbbench.frontends.registry import unavailable_reason
from lbbench.system.procs import lbbench_argv

pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]  # an 8 s phase per front end, pods slow to start

CONFIG = REPO / "configs" / "graceful-shutdown.toml"


def run(tmp_path: Path, frontends: str, fallback: bool) -> tuple[dict[str, object], pd.DataFrame, pd.DataFrame]:
    config = tmp_path / "graceful.toml"
    text = CONFIG.read_text().replace('[run]\n', f"[run]\nterminating_fallback = {str(fallback).lower()}\n", 1)
    # A pod start takes up to ~20 s on a loaded 2-core CI machine: the preStop delay here outlasts
    # the run, so the terminating pod is the only one serving whenever the replacement is late.
    text = text.replace('pre_stop_delay = "12s"', 'pre_stop_delay = "60s"').replace('"30s"', '"90s"')
    # 8 s of load (5 s after the delete) show the same thing as the config's 20 s: the suite has a time budget
    text = text.replace('duration = "20s"', 'duration = "8s"')
    config.write_text(text.replace("[cluster]\n", "[cluster]\nnode_ip_base = 76\n", 1))
    out = tmp_path / "out"
    proc = subprocess.run(lbbench_argv("run", str(config), "--out", str(out), "--quiet", "--frontends", frontends),
                          capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    return summary, pd.read_parquet(out / "requests.parquet"), pd.read_csv(out / "events.csv", keep_default_na=False)


def test_the_fallback_serves_through_the_terminating_pod(tmp_path: Path) -> None:
    fronts = [f for f in ("userspace-dnat", "kernel-nftables") if unavailable_reason(f) is None]
    if not fronts:
        pytest.skip("no DNAT front end available")
    summary, rows, events = run(tmp_path, ",".join(fronts), fallback=True)
    for fe in fronts:
        s = summary["frontends"][fe]  # type: ignore[index]
        assert s["errors"] == {k: 0 for k in s["errors"]}, f"{fe}: {s['errors']}"
        ev = events[events["frontend"] == fe]
        deleted_at = float(ev.loc[ev["kind"] == "pod_terminating", "at_s"].iloc[0])
        victim = ev.loc[ev["kind"] == "pod_terminating", "target"].iloc[0]
        synced = ev.loc[ev["kind"] == "endpoints_synced", "detail"]
        assert any(d.startswith("0 ") and f"{victim}=" in d and "[terminating,serving]" in d for d in synced)
        served = rows[(rows["frontend"] == fe) & (rows["pod"] == victim) & (rows["sent_s"] > deleted_at + 0.6)]
        assert len(served) > 5  # it kept serving, as a terminating endpoint, after the sync


def test_without_the_fallback_requests_fail(tmp_path: Path) -> None:
    if (why := unavailable_reason("userspace-dnat")) is not None:
        pytest.skip(why)
    summary, _, _ = run(tmp_path, "userspace-dnat", fallback=False)
    errors = summary["frontends"]["userspace-dnat"]["errors"]  # type: ignore[index]
    assert sum(errors.values()) > 10, errors  # no ready endpoint until the replacement is synced
