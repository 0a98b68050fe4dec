"""A damaged results folder: `report` and `compare` say which file in one line, exit 2, and write nothing."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from test_report import make_folder

from lbbench.system.procs import lbbench_argv


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


DAMAGE: dict[str, tuple[str, Callable[[Path], None], str]] = {
    # name: (file, how it is damaged, what the one line says)
    "summary-is-a-list": ("summary.json", lambda p: p.write_text("[]\n"), "expected a JSON object"),
    "summary-section-type": ("summary.json", lambda p: p.write_text(p.read_text().replace(
        '"phases": [', '"phases": "oops", "was": [', 1)), "'phases' should be a list"),
    "summary-not-json": ("summary.json", _truncate, "not valid JSON"),
    "requests-truncated": ("requests.parquet", _truncate, "not a readable parquet file"),
    "timeseries-garbage": ("timeseries.parquet", lambda p: p.write_bytes(b"\x00garbage" * 50),
                           "not a readable parquet file"),
    "events-garbage": ("events.csv", lambda p: p.write_text("lorem ipsum\ndolor sit amet\n"),
                       "missing at_s, kind, target, detail"),
    "events-binary": ("events.csv", lambda p: p.write_bytes(bytes(range(256)) * 4), "events"),
    "events-bad-time": ("events.csv", lambda p: p.write_text(p.read_text().replace("2.000000", "soon", 1)),
                        "at_s must be seconds"),
}


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_folder(tmp_path_factory.mktemp("good"), frontends=("l7-proxy",))


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def assert_refused(proc: subprocess.CompletedProcess[str], file: Path, expected: str) -> None:
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    [line] = proc.stderr.strip().splitlines()
    assert str(file) in line and expected in line, line


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damaged_folder_is_refused_by_report_and_compare(good: Path, tmp_path: Path, damage: str) -> None:
    name, spoil, expected = DAMAGE[damage]
    bad = tmp_path / "bad"
    shutil.copytree(good, bad)
    spoil(bad / name)
    before = snapshot(bad)
    report = subprocess.run(lbbench_argv("report", str(bad)), capture_output=True, text=True, timeout=120)
    assert_refused(report, bad / name, expected)
    out = tmp_path / "cmp"
    compare = subprocess.run(lbbench_argv("compare", str(good), str(bad), "--out", str(out)), capture_output=True,
                             text=True, timeout=120)
    assert_refused(compare, bad / name, expected)
    assert snapshot(bad) == before  # nothing in the folder was overwritten (no plots, no report)
    assert not out.exists()
