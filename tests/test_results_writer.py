"""The one writer of the results folder (lbbench.results.writer): `run` and `merge` write the same shape."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from test_merge import CONFIG as MERGE_CONFIG
from test_merge import _three, merge_args
from test_report import make_folder

from lbbench.commands import merge as merge_cmd

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
    assert b["notes"] == [] and a["notes"] == []
    assert a["config"]["cluster"] == "lbbench" and b["config"]["cluster"] == "kubernetes"
