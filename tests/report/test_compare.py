"""`lbbench compare A B`: per front end side by side with deltas, JSON + Markdown + one CDF plot."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from test_report import make_folder, summary_of

from lbbench.cli import main


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A: DNAT + proxy, seed 1. B: proxy + haproxy, seed 2 (so l7-proxy is in both, the others in one)."""
    tmp = tmp_path_factory.mktemp("pair")
    a = make_folder(tmp, name="run-a", frontends=("userspace-dnat", "l7-proxy"), seed=1)
    b = make_folder(tmp, name="run-b", frontends=("l7-proxy", "haproxy"), seed=2)
    return a, b


def test_compare_writes_table_json_and_cdf(
    pair: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a, b = pair
    out = tmp_path / "cmp"
    assert main(["compare", str(a), str(b), "--out", str(out)]) == 0
    stdout, stderr = capsys.readouterr()
    assert stdout.strip().splitlines()[-1] == str(out / "compare.md")
    assert "note: seed differs: A 1, B 2" in stderr
    assert "note: only in A: userspace-dnat" in stderr and "note: only in B: haproxy" in stderr
    assert (out / "latency_cdf.png").read_bytes()[:4] == b"\x89PNG"

    data = json.loads((out / "compare.json").read_text())
    assert data["schema"] == 1 and set(data["frontends"]) == {"userspace-dnat", "l7-proxy", "haproxy"}
    assert data["frontends"]["userspace-dnat"]["in"] == ["a"] and data["frontends"]["haproxy"]["in"] == ["b"]
    sa, sb = summary_of(a)["frontends"]["l7-proxy"], summary_of(b)["frontends"]["l7-proxy"]  # type: ignore[index]
    p99 = data["frontends"]["l7-proxy"]["metrics"]["latency_s.p99"]
    assert p99["a"] == sa["latency_s"]["p99"] and p99["b"] == sb["latency_s"]["p99"]
    assert p99["delta"] == pytest.approx(sb["latency_s"]["p99"] - sa["latency_s"]["p99"])
    assert p99["delta_pct"] == pytest.approx(100 * (sb["latency_s"]["p99"] / sa["latency_s"]["p99"] - 1))
    lost = data["frontends"]["userspace-dnat"]["metrics"]["lost"]
    assert lost["a"] == summary_of(a)["frontends"]["userspace-dnat"]["failover"][0]["lost"]  # type: ignore[index]
    assert lost["b"] is None and lost["delta"] is None

    md = (out / "compare.md").read_text()
    assert "## l7-proxy" in md and "](latency_cdf.png)" in md and "| Δ (B − A) |" in md
    requests_row = next(
        line for line in md.splitlines() if line.startswith("| requests |") and "absent" in line
    )
    assert "absent" in requests_row  # a front end measured in one folder only


def test_compare_a_folder_with_its_copy_has_zero_deltas(pair: tuple[Path, Path], tmp_path: Path) -> None:
    a, _ = pair
    copy = tmp_path / "copy"
    shutil.copytree(a, copy)
    out = tmp_path / "same"
    assert main(["compare", str(a), str(copy), "--out", str(out)]) == 0
    data = json.loads((out / "compare.json").read_text())
    assert data["notes"] == []
    for fe in data["frontends"].values():
        for key, m in fe["metrics"].items():
            assert m["delta"] in (0, None), key


def test_default_out_is_named_after_both_folders(
    pair: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = pair
    monkeypatch.chdir(tmp_path)
    assert main(["compare", str(a), str(b)]) == 0
    assert (tmp_path / "compare-run-a-vs-run-b" / "compare.json").is_file()


def test_different_schemas_refuse(
    pair: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a, b = pair
    newer = tmp_path / "newer"
    shutil.copytree(b, newer)
    (newer / "summary.json").write_text(json.dumps({**summary_of(b), "schema": 2}))
    assert main(["compare", str(a), str(newer), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lbbench compare: error: cannot compare results of different schemas")
    assert "schema 1" in err and "schema 2" in err
    assert not (tmp_path / "x").exists()


def test_bad_folder_exits_2(
    pair: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a, _ = pair
    assert main(["compare", str(a), str(tmp_path / "missing"), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "no such folder" in err and len(err.strip().splitlines()) == 1


def test_fail_if_worse_is_a_regression_gate_and_differing_keys_are_named(
    pair: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a, _ = pair
    same, slower = tmp_path / "same", tmp_path / "slower"
    shutil.copytree(a, same)
    shutil.copytree(a, slower)
    assert main(["compare", str(a), str(same), "--out", str(tmp_path / "o1"), "--fail-if-worse", "10"]) == 0
    data = json.loads((slower / "summary.json").read_text())
    fe = data["frontends"]["l7-proxy"]
    fe["latency_s"]["p99"] *= 2  # twice as slow, the interval moved with it: a real regression
    if fe["latency_ci_s"]["p99"] is not None:
        fe["latency_ci_s"]["p99"] = {k: v * 2 if k != "batches" else v for k, v in fe["latency_ci_s"]["p99"].items()}
    fe["errors"] = {"refused": 5}  # errors where A had none
    data["config"]["load"]["arrivals"] = "constant"
    (slower / "summary.json").write_text(json.dumps(data))
    capsys.readouterr()
    assert main(["compare", str(a), str(slower), "--out", str(tmp_path / "o2"), "--fail-if-worse", "10"]) == 3
    err = capsys.readouterr().err
    assert "note: config load.arrivals differs: A poisson, B constant" in err
    assert "worse by more than 10%: l7-proxy latency p99 (ms)" in err and "+100.0%" in err
    assert "worse by more than 10%: l7-proxy errors" in err
