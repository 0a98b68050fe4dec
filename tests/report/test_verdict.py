"""The report leads with what the clients got: errors first, SLO, latency counting failures; checks exit 3."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from test_report import make_folder

from lbbench.cli import main
from lbbench.model.checks import parse_check
from lbbench.report import ReportPaths, load_results, write_report
from lbbench.report.checks import CHECK_FAILED_EXIT
from lbbench.report.headline import ranked
from lbbench.report.steady import capacity_restored_at


@pytest.fixture(scope="module")
def reported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, ReportPaths]:
    folder = make_folder(tmp_path_factory.mktemp("verdict"))
    return folder, write_report(folder)


def test_a_front_end_with_errors_never_ranks_above_one_without(reported: tuple[Path, ReportPaths]) -> None:
    folder, paths = reported
    fes = json.loads((folder / "summary.json").read_text())["frontends"]
    assert sum(fes["userspace-dnat"]["errors"].values()) > 0 and not fes["l7-proxy"]["errors"]
    views = ranked(load_results(folder))
    assert [v.frontend for v in views] == ["l7-proxy", "userspace-dnat"]
    md = paths.markdown.read_text()
    verdict = md[md.index("## Verdict"):].split("\n\n")[1]
    assert verdict.startswith("**l7-proxy served the clients best: no failed request")
    assert "Failed requests: userspace-dnat" in verdict
    # the key table: failures, SLO attainment, latency counting failures, and the 2xx-only p99 labelled so
    header = next(line for line in md.splitlines() if line.startswith("| # | front end | failed"))
    assert "OK within" in header and "p99 (ms)" in header and "p99 of 2xx only (ms)" in header
    rows = [line for line in md.splitlines() if line.startswith(("| 1 |", "| 2 |"))]
    assert rows[0].startswith("| 1 | l7-proxy | 0 |") and rows[1].startswith("| 2 | userspace-dnat |")


def test_verdict_and_headline_figure_come_before_anything_folded(reported: tuple[Path, ReportPaths]) -> None:
    _, paths = reported
    html = paths.html.read_text()
    verdict, figure, first_fold = (html.index('class="verdict"'), html.index('alt="What the clients got"'),
                                   html.index("<details>"))
    assert verdict < figure < first_fold
    assert html.count("<details>") == html.count("</details>") >= 4


def test_latency_counting_failures_is_not_the_2xx_latency(reported: tuple[Path, ReportPaths]) -> None:
    folder, _ = reported
    dnat = next(v for v in ranked(load_results(folder)) if v.frontend == "userspace-dnat")
    assert dnat.requests == dnat.ok + dnat.error_count
    assert dnat.all_latency["p99"] != dnat.ok_latency["p99"]
    assert dnat.slo_pct is not None and dnat.slo_pct <= 100.0 * dnat.ok / dnat.requests
    iv = dnat.all_ci["p50"]
    assert iv is not None and iv.lo <= iv.value <= iv.hi


def test_steady_state_theory_is_computed_before_the_event(reported: tuple[Path, ReportPaths]) -> None:
    _, paths = reported
    md = paths.markdown.read_text()
    section = md[md.index("## Measured against theory (steady state)"):]
    row = next(line for line in section.splitlines() if line.startswith("| l7-proxy | 100 |"))
    assert "0.0–2.0 s" in row and "kill_pod" in row


def test_checks_pass_fail_exit_code_and_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = make_folder(tmp_path)
    assert main(["report", str(folder), "--no-check", "--check", "l7-proxy.lost == 0"]) == 0
    assert main(["report", str(folder), "--no-check", "--check", "l7-proxy.lost == 0",
                 "--check", "*.errors_pct < 0.001"]) == CHECK_FAILED_EXIT
    err = capsys.readouterr().err
    assert "check failed: *.errors_pct < 0.001 (userspace-dnat.errors_pct = " in err
    assert "l7-proxy.lost" not in err
    checks = json.loads((folder / "summary.json").read_text())["checks"]
    assert [(c["check"], c["frontend"], c["passed"]) for c in checks] == [
        ("l7-proxy.lost == 0", "l7-proxy", True), ("*.errors_pct < 0.001", "l7-proxy", True),
        ("*.errors_pct < 0.001", "userspace-dnat", False)]
    md = (folder / "report.md").read_text()
    assert "## Checks" in md and "| FAIL |" in md
    # a check on a front end that measured nothing fails rather than passing by absence
    assert main(["report", str(folder), "--no-check", "--check", "haproxy.p99 < 1s"]) == CHECK_FAILED_EXIT
    assert main(["report", str(folder), "--no-check", "--check", "l7-proxy.p99 < 1"]) == 2


@pytest.mark.parametrize(("text", "metric", "op", "value"), [
    ("userspace-dnat.p99 < 200ms", "p99", "<", 0.2),
    ("*.errors_pct < 1", "errors_pct", "<", 1.0),
    ("l7-proxy.theory.mean within 10%", "theory.mean", "within", 0.1),
    ("l7-proxy.ok_p999 <= 1.5s", "ok_p999", "<=", 1.5),
])
def test_check_expressions(text: str, metric: str, op: str, value: float) -> None:
    c = parse_check(text)
    assert (c.metric, c.op) == (metric, op) and c.value == pytest.approx(value)


def test_a_sweep_answers_across_its_rates(tmp_path: Path) -> None:
    folder = make_folder(tmp_path, rates=(80.0, 160.0))
    md = write_report(folder).markdown.read_text()
    verdict = md[md.index("## Verdict"):].split("\n\n")[1]
    assert verdict.startswith("**Across 2 rates (80-160 rps), l7-proxy served the clients best at every rate")
    # the sweep leads with its curves and a per-rate table, before anything folded
    lead = md[md.index("## Verdict"):md.index("<details>")]
    assert "theory_mean_vs_utilisation.png" in lead and "| rate (rps) | front end | failed |" in lead


def _synced(*rows: tuple[float, str]) -> pd.DataFrame:
    return pd.DataFrame([{"at_s": t, "kind": "endpoints_synced", "target": "default/web", "detail": d}
                         for t, d in rows])


def test_steady_state_resumes_only_when_endpoints_are_back_to_full_strength() -> None:
    # quickstart's shape: 4 pods, one killed at 5 s, 3 synced at 6.0 s, the replacement synced at 6.8 s
    ev = _synced((-1.8, "4 a=1 b=2 c=3 d=4"), (6.0, "3 a=1 b=2 c=3"), (6.8, "4 a=1 b=2 c=3 e=5"))
    assert capacity_restored_at(ev, 5.0, 10.0) == pytest.approx(6.8)
    # never back: the rest of the phase is a smaller system than the model's
    assert capacity_restored_at(ev.iloc[:2], 5.0, 10.0) == 10.0
    # an event that never lowered the Endpoints (packet loss, say) adds no cut
    assert capacity_restored_at(ev.iloc[:1], 5.0, 10.0) == 5.0
    assert capacity_restored_at(_synced((-1.8, "4 a"), (7.0, "5 a")), 5.0, 10.0) == 5.0
