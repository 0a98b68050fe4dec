"""The one writer of the results folder (lbbench.results.writer): `run` and `merge` write the same shape."""

from __future__ import annotations

import dataclasses
import json
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from test_merge import CONFIG as MERGE_CONFIG
from test_merge import _three, merge_args
from test_report import CONFIG as REPORT_CONFIG
from test_report import _summary, make_folder
from test_run import write_config

from lbbench.commands import merge as merge_cmd
from lbbench.config.parse import load_config
from lbbench.load.generator import ROW_COLUMNS, LoadResult
from lbbench.load.histogram import LogHistogram
from lbbench.report import load_results
from lbbench.report.verify import check
from lbbench.results.writer import FolderContents, summary_document, write_folder
from lbbench.run.collect import write_results
from lbbench.run.phase import PhaseKey, PhaseRecord
from lbbench.system.procs import lbbench_argv

FILES = ("summary.json", "events.csv", "timeseries.parquet", "requests.parquet", "config.toml")


def _keys(summary: dict[str, Any]) -> dict[str, set[str]]:
    """The key sets of each section of a summary.json (one phase and one front end stand for all)."""
    [frontend] = list(summary["frontends"].values())[:1]
    return {"top": set(summary), "config": set(summary["config"]), "load": set(summary["config"]["load"]),
            "phase": set(summary["phases"][0]), "frontend": set(frontend)}


def test_run_and_merge_write_the_same_files_and_keys(tmp_path: Path) -> None:
    ran = make_folder(tmp_path, frontends=("l7-proxy",))
    config = tmp_path / "c.toml"
    config.write_text(MERGE_CONFIG.replace("DURATION", "2s"))
    merged = tmp_path / "merged"
    assert merge_cmd.run(merge_args(_three(tmp_path), merged, "--config", str(config))) == 0
    for folder in (ran, merged):
        assert sorted(p.name for p in folder.iterdir() if p.is_file()) == sorted(FILES), folder
        assert not [p for p in folder.iterdir() if p.name.startswith(".")]  # no temporary left behind
    a = json.loads((ran / "summary.json").read_text())
    b = json.loads((merged / "summary.json").read_text())
    ka, kb = _keys(a), _keys(b)
    for section in ka:
        assert ka[section] == kb[section], (section, ka[section] ^ kb[section])
    assert a["write_errors"] == b["write_errors"] == []
    assert a["complete"] is True and b["complete"] is True  # the verdict, rewritten once every file was written
    assert b["notes"] == [] and a["notes"] == []
    assert a["config"]["cluster"] == "lbbench" and b["config"]["cluster"] == "kubernetes"


# -- nothing measured is lost to a failed write ------------------------------------------------------------
def _contents(n: int) -> FolderContents:
    rows = pd.DataFrame({"intended_s": np.arange(n) / 100.0, "latency_s": 0.001, "frontend": "l7-proxy"})
    summary = summary_document(complete=True, metadata={}, config={}, phases=[], frontends={}, skipped={},
                               notes=[])
    return FolderContents(summary=summary, rows=rows, events=pd.DataFrame({"at_s": [0.5], "kind": ["event"]}),
                          timeseries=pd.DataFrame({"t_s": [0.0]}))


def test_a_file_that_cannot_be_written_keeps_its_last_version_and_marks_the_folder(tmp_path: Path) -> None:
    assert write_folder(tmp_path, _contents(10)) == []
    blocker = tmp_path / "timeseries.parquet"
    blocker.unlink()
    blocker.mkdir()  # the rename onto it fails: this one file cannot be written
    failures = write_folder(tmp_path, _contents(20))
    assert [f.path.name for f in failures] == ["timeseries.parquet"]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["complete"] is False
    assert summary["write_errors"] == [str(failures[0])] and "timeseries.parquet" in summary["write_errors"][0]
    assert len(pd.read_parquet(tmp_path / "requests.parquet")) == 20  # the others were still written
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.slow
def test_a_full_disk_mid_run_keeps_the_rows_measured_before(tmp_path: Path) -> None:
    """Two phases on a small tmpfs (private mount namespace); the disk is filled after the first is written."""
    config = write_config(tmp_path, ["userspace-dnat", "l7-proxy"], duration="2s", kill_at="1s", base=52)
    disk, saved = tmp_path / "disk", tmp_path / "saved"
    disk.mkdir()
    out = disk / "out"
    run = shlex.join(lbbench_argv("run", str(config), "--out", str(out), "--quiet", "--no-netns"))
    # config.toml is the last file of the first write: then every file holds the first phase
    one_phase = shlex.join([sys.executable, "-c", "import json, os, sys; "
                            f"sys.exit(not os.path.exists('{out}/config.toml') or "
                            f"len(json.load(open('{out}/summary.json'))['phases']) < 1)"])
    script = f"""
        mount -t tmpfs -o size=8m tmpfs {disk} || exit 99
        {run} 2>{tmp_path}/stderr & pid=$!
        until {one_phase} 2>/dev/null; do sleep 0.1; done
        dd if=/dev/zero of={disk}/fill bs=64k 2>/dev/null
        wait $pid; echo $? >{tmp_path}/rc
        rm {disk}/fill; cp -r {out} {saved}
    """
    proc = subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True, text=True, timeout=300)
    if proc.returncode == 99 or not (tmp_path / "rc").exists():
        pytest.skip(f"no private mount namespace with tmpfs here: {proc.stderr.strip()}")
    stderr = (tmp_path / "stderr").read_text()
    assert int((tmp_path / "rc").read_text()) != 0
    assert "Traceback" not in stderr
    assert f"could not write {out}/" in stderr and "No space left on device" in stderr
    summary = json.loads((saved / "summary.json").read_text())
    assert summary["complete"] is False
    rows = pd.read_parquet(saved / "requests.parquet")  # a whole file, not a truncated one
    assert set(rows["frontend"]) == {"userspace-dnat"} and len(rows) > 100
    assert [p["frontend"] for p in summary["phases"]] == ["userspace-dnat"]
    assert not [p for p in saved.iterdir() if p.name.endswith(".tmp")]


# -- rates of a phase cut short ----------------------------------------------------------------------------
def test_achieved_rps_of_a_phase_cut_short_is_over_the_time_it_ran(tmp_path: Path) -> None:
    """The issue's numbers: SIGINT 6.65 s into a 20 s phase, 1,890 requests sent: ~284 rps, not 94.5."""
    cfg = tmp_path / "cut.toml"
    cfg.write_text(REPORT_CONFIG.format(rates="[300]", duration=20, seed=1, repeat=1, frontends='"l7-proxy"',
                                        events=""))
    n, ran_s = 1890, 6.65
    intended = np.linspace(0.0, ran_s - 0.01, n)
    rows = pd.DataFrame({c: 0 for c in ROW_COLUMNS}, index=range(n)).assign(
        intended_s=intended, sent_s=intended, done_s=intended + 0.002, latency_s=0.002, status=200, error="",
        pod="web-a", pod_ip="127.10.0.2", queue_ms=np.nan, service_ms=1.0, proxy_queue_ms=np.nan,
        proxy_upstream_ms=np.nan)[list(ROW_COLUMNS)]
    summary = dataclasses.replace(_summary(rows, 300.0, False), stopped=True, complete=False,
                                  actual_duration_s=ran_s)
    record = PhaseRecord(PhaseKey("l7-proxy", 300.0, 0), load=LoadResult(rows, LogHistogram(), summary, False, ()))
    assert write_results(tmp_path, load_config(cfg), [record], {}, False, {}) == []
    written = json.loads((tmp_path / "summary.json").read_text())
    for entry in (written["phases"][0], written["frontends"]["l7-proxy"]):
        assert entry["ran_s"] == ran_s
        assert entry["achieved_rps"] == pytest.approx(n / ran_s) and entry["ok_rps"] == pytest.approx(n / ran_s)
    _fresh, problems = check(load_results(tmp_path))  # `lbbench report` recomputes the same from the rows
    assert problems == []
