"""Hypervisor steal: read from /proc/stat, summarised per phase, named in the report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_report import make_folder

from lbbench.report import write_report
from lbbench.system.hoststat import CpuTicks, host_cpu, read_cpu_ticks, steal_fraction


def test_reads_this_machines_counters_and_they_only_grow() -> None:
    a = read_cpu_ticks()
    sum(i * i for i in range(200_000))  # let some ticks pass
    b = read_cpu_ticks()
    assert a is not None and b is not None
    assert 0 <= a.steal <= a.total and b.total >= a.total and b.steal >= a.steal


def test_steal_is_taken_from_the_eighth_field(tmp_path: Path) -> None:
    stat = tmp_path / "stat"
    stat.write_text("cpu  100 0 50 800 10 0 5 35 7 0\ncpu0 1 2 3 4 5 6 7 8\n")
    assert read_cpu_ticks(str(stat)) == CpuTicks(steal=35, total=1000)  # guest (7) is already in user
    later = CpuTicks(steal=35 + 50, total=1000 + 200)
    assert steal_fraction(CpuTicks(35, 1000), later) == pytest.approx(0.25)
    assert steal_fraction(later, later) is None and steal_fraction(None, later) is None
    stat.write_text("intr 1 2 3\n")
    assert read_cpu_ticks(str(stat)) is None
    assert read_cpu_ticks(str(tmp_path / "missing")) is None


def test_the_worst_second_is_not_averaged_away() -> None:
    summary = host_cpu([0.0] * 290 + [0.5] * 10)  # 30 s of 100 ms samples, one bad second
    assert summary is not None
    assert summary["steal_max_1s"] == pytest.approx(0.5)
    assert summary["steal_fraction"] == pytest.approx(5 / 300)
    short = host_cpu([0.2, 0.4])
    assert short is not None and short["steal_max_1s"] == pytest.approx(0.3)
    assert host_cpu([]) is None


def test_a_phase_with_steal_gets_a_banner_and_one_without_does_not(tmp_path: Path) -> None:
    folder = make_folder(tmp_path)
    data = json.loads((folder / "summary.json").read_text())
    data["phases"][0]["host_cpu"] = {"steal_fraction": 0.012, "steal_max_1s": 0.31}
    data["phases"][1]["host_cpu"] = {"steal_fraction": 0.001, "steal_max_1s": 0.02}
    (folder / "summary.json").write_text(json.dumps(data))
    md = write_report(folder).markdown.read_text()
    banners = [line for line in md.splitlines() if line.startswith("> **") and "hypervisor" in line]
    first, second = data["phases"][0], data["phases"][1]
    assert len(banners) == 1, banners
    assert f"{first['frontend']} @ {first['rate_rps']:g} rps" in banners[0] and "31%" in banners[0]
    assert f"{second['frontend']} @" not in banners[0]
