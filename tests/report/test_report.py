"""The report: plots, report.html (self-contained), report.md and `lbbench report DIR`, from the files alone.

Most tests use results folders written by the real writer (`lbbench.run.collect.write_results`) from
fabricated phase records, so every shape (sweeps, repeats, no events, missing samples, cut-short
runs, theory) is covered cheaply; one slow test reports on a real `lbbench run`.
"""

from __future__ import annotations

import json
import random
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lbbench.cli import main
from lbbench.cluster.events import LoggedEvent
from lbbench.config.parse import load_config
from lbbench.load.generator import ROW_COLUMNS, LoadResult
from lbbench.load.histogram import LogHistogram
from lbbench.load.summary import LoadSummary
from lbbench.report import ReportPaths, load_results, write_report
from lbbench.report.verify import check
from lbbench.run.collect import write_results
from lbbench.run.phase import PhaseKey, PhaseRecord
from lbbench.system.procs import lbbench_argv

PLOTS = {
    "headline",
    "throughput_over_time",
    "per_pod_latency",
    "latency_over_time",
    "errors_over_time",
    "latency_cdf",
    "pod_share",
    "queue_and_endpoints",
    "failover",
}
PODS = ("web-5d5e-aaaaa", "web-5d5e-bbbbb", "web-5d5e-ccccc")
DURATION_S = 4.0
EVENT_AT_S = 2.0

CONFIG = """
[[deployments]]
name = "web"
replicas = 3
[deployments.template]
service = "exp:5ms"
[[services]]
name = "web"
selector = {{ app = "web" }}
[load]
rate = {rates}
[run]
duration = "{duration}s"
seed = {seed}
repeat = {repeat}
frontends = [{frontends}]
{events}
"""
KILL = """
[[events]]
at = "2s"
action = "kill_pod"
target = "deployment/web"
index = 0
"""


# -- synthetic results folders --------------------------------------------------------------------
def _rows(rng: np.random.Generator, frontend: str, rate: float, with_event: bool) -> pd.DataFrame:
    n = int(rate * DURATION_S)
    intended = np.sort(rng.uniform(0.0, DURATION_S, n))
    service_ms = rng.exponential(5.0, n)
    dnat = frontend == "userspace-dnat"
    queue_ms = rng.exponential(8.0 if dnat else 0.05, n)
    outside_ms = rng.exponential(0.5 if dnat else 4.0, n)
    latency = (queue_ms + service_ms + outside_ms) / 1e3
    pods = rng.choice(PODS, n, p=[0.5, 0.3, 0.2] if dnat else [0.34, 0.33, 0.33])
    failed = np.zeros(n, dtype=bool)
    if dnat and with_event:  # random DNAT keeps sending to the killed pod until the endpoints sync
        window = (intended >= EVENT_AT_S) & (intended < EVENT_AT_S + 0.5)
        failed = window & (rng.uniform(size=n) < 0.3)
    rows = pd.DataFrame(
        {
            "intended_s": intended,
            "sent_s": intended + 1e-5,
            "done_s": intended + latency,
            "latency_s": latency,
            "status": np.where(failed, 0, 200).astype(np.int16),
            "error": np.where(failed, "reset", ""),
            "pod": np.where(failed, "", pods),
            "pod_ip": np.where(failed, "", "127.10.0.2"),
            "conn_id": np.arange(n, dtype=np.int64),
            "new_conn": np.ones(n, dtype=bool),
            "worker": np.zeros(n, dtype=np.int16),
            "queue_ms": np.where(failed, np.nan, queue_ms),
            "service_ms": np.where(failed, np.nan, service_ms),
            # what lbbench's l7-proxy adds: its queue wait and slot time (NaN behind DNAT)
            "proxy_queue_ms": np.nan if dnat else outside_ms * 0.8,
            "proxy_upstream_ms": np.nan if dnat else service_ms + queue_ms + 0.3,
        }
    )
    return rows[list(ROW_COLUMNS)]


def _summary(rows: pd.DataFrame, rate: float, saturated: bool) -> LoadSummary:
    ok = int((rows["error"] == "").sum())
    lat = rows.loc[rows["error"] == "", "latency_s"]
    stats: dict[str, float | None] = {
        "mean": float(lat.mean()),
        "p50": float(lat.quantile(0.5)),
        "p90": float(lat.quantile(0.9)),
        "p99": float(lat.quantile(0.99)),
        "p999": float(lat.quantile(0.999)),
        "max": float(lat.max()),
    }
    return LoadSummary(
        target="127.96.0.1:8080",
        path="/",
        mode="open",
        arrivals="poisson",
        connections="close",
        workers=1,
        closed_loop_users=0,
        think_time_s=0.0,
        seed=1,
        requested_rps=rate,
        achieved_rps=len(rows) / DURATION_S,
        ok_rps=ok / DURATION_S,
        requested_duration_s=DURATION_S,
        actual_duration_s=DURATION_S,
        scheduled=len(rows),
        requests=len(rows),
        completed=len(rows),
        ok=ok,
        ok_while_sending=ok,
        failed=len(rows) - ok,
        aborted=0,
        errors={"reset": len(rows) - ok},
        statuses={"200": ok},
        latency_s=stats,
        lateness_s={"p50": 0.0, "p99": 0.02 if saturated else 0.0005, "max": 0.03 if saturated else 0.001},
        pool_wait_s=None,
        pool_wait_own_s=None,
        worker_cpu_s=(0.5,),
        worker_cpu_fraction=(0.1,),
        lateness_threshold_s=0.002,
        generator_saturated=saturated,
        saturation_reason="send lateness p99 3 ms > 2 ms" if saturated else None,
        complete=True,
        stopped=False,
    )


def _events(with_event: bool) -> list[LoggedEvent]:
    events = [LoggedEvent(-1.0 + 0.01 * i, "pod_ready", pod, "ip=127.10.0.2") for i, pod in enumerate(PODS)]
    events.append(LoggedEvent(-0.5, "load_started", "127.96.0.1:8080", "rate=100"))
    if with_event:
        events += [
            LoggedEvent(EVENT_AT_S, "event", "deployment/web", "kill_pod"),
            LoggedEvent(EVENT_AT_S + 1e-4, "pod_killed", PODS[0], "ip=127.10.0.2 signal=SIGKILL"),
        ]
    return events


def _samples(frontend: str, with_event: bool) -> list[dict[str, float]]:
    out = []
    for i in range(int(DURATION_S * 10)):
        t = i / 10
        ready = 2.0 if with_event and t >= EVENT_AT_S else 3.0
        synced = 2.0 if with_event and t >= EVENT_AT_S + 0.5 else 3.0
        queue = float(i % 4) if frontend == "l7-proxy" else 0.0
        out.append(
            {
                "t_s": t,
                "queue_len": queue,
                "in_flight": 1.0,
                "ready_endpoints": ready,
                "synced_endpoints": synced,
            }
        )
    return out


def make_folder(
    tmp_path: Path,
    name: str = "synthetic",
    frontends: tuple[str, ...] = ("userspace-dnat", "l7-proxy"),
    rates: tuple[float, ...] = (100.0,),
    repeat: int = 1,
    seed: int = 1,
    with_event: bool = True,
    complete: bool = True,
    no_samples: tuple[str, ...] = (),
    saturated: tuple[str, ...] = (),
    skipped: dict[str, str] | None = None,
) -> Path:
    """A results folder written by lbbench's own writer from fabricated phases."""
    cfg = tmp_path / f"{name}.toml"
    cfg.write_text(
        CONFIG.format(
            rates=json.dumps(list(rates)),
            duration=DURATION_S,
            seed=seed,
            repeat=repeat,
            frontends=", ".join(f'"{f}"' for f in frontends or list(skipped or {})),
            events=KILL if with_event else "",
        )
    )
    config = load_config(cfg)
    rng = np.random.default_rng(seed)
    records = []
    for rate in rates:
        for fe in frontends:
            for rep in range(repeat):
                rows = _rows(rng, fe, rate, with_event)
                load = LoadResult(rows, LogHistogram(), _summary(rows, rate, fe in saturated), True, (0.5,))
                records.append(
                    PhaseRecord(
                        PhaseKey(fe, rate, rep),
                        target="127.96.0.1:8080",
                        load=load,
                        events=_events(with_event),
                        samples=[] if fe in no_samples else _samples(fe, with_event),
                        cpu_s={"frontend": 0.4, "generator": 0.5, "pods": 1.5},
                        counters={},
                        complete=True,
                    )
                )
    out = tmp_path / name
    out.mkdir()
    write_results(out, config, records, skipped or {}, complete, {"config_file": str(cfg)})
    return out


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return make_folder(tmp_path)


@pytest.fixture(scope="module")
def reported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, ReportPaths]:
    """One synthetic folder and its report, shared by the tests that only read them."""
    folder = make_folder(tmp_path_factory.mktemp("reported"))
    return folder, write_report(folder)


def summary_of(folder: Path) -> dict[str, object]:
    data: dict[str, object] = json.loads((folder / "summary.json").read_text())
    return data


# -- the report files -------------------------------------------------------------------------------
def test_report_writes_every_file_and_html_is_self_contained(reported: tuple[Path, ReportPaths]) -> None:
    folder, paths = reported
    assert paths.html == folder / "report.html" and paths.markdown == folder / "report.md"
    assert {p.stem for p in paths.plots} == PLOTS
    for p in paths.plots:
        assert p.parent == folder / "plots"
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    html = paths.html.read_text()
    assert "http://" not in html and "https://" not in html
    assert 'src="plots/' not in html and "<script" not in html and "<link" not in html
    assert html.count('src="data:image/png;base64,') == len(paths.plots)
    md = paths.markdown.read_text()
    for p in paths.plots:
        assert f"](plots/{p.name})" in md
    for text in (html, md):
        assert "userspace-dnat" in text and "l7-proxy" in text
        assert "cut short" not in text
        assert "seed" in text and "poisson" in text


def test_table_and_answers_come_from_the_numbers(reported: tuple[Path, ReportPaths]) -> None:
    folder, _ = reported
    fes = summary_of(folder)["frontends"]
    assert isinstance(fes, dict)
    lost = fes["userspace-dnat"]["failover"][0]["lost"]
    window = fes["userspace-dnat"]["failover"][0]["error_window_s"]
    assert lost > 0 and fes["l7-proxy"]["failover"][0]["lost"] == 0
    md = (folder / "report.md").read_text()
    assert (
        f"During kill_pod deployment/web at 2.0 s, userspace-dnat lost {lost} requests over {window:.2f} s"
        in md
    )
    assert "l7-proxy lost 0" in md
    # the side-by-side table: p99 of each front end in ms, and the requests count
    p99_ms = fes["l7-proxy"]["latency_s"]["p99"] * 1e3
    row = next(line for line in md.splitlines() if line.startswith("| latency p99 (ms)"))
    assert f"{p99_ms:.3g}" in row
    assert f"| requests | {fes['userspace-dnat']['requests']:,} | {fes['l7-proxy']['requests']:,} |" in md
    # where the queue was: DNAT's requests waited at the pods, the proxy's before them
    assert "userspace-dnat: requests waited mostly at the pods" in md
    assert "l7-proxy: requests waited mostly before the pods" in md


def test_cut_short_run_says_so_at_the_top(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = make_folder(tmp_path, complete=False)
    assert main(["report", str(folder)]) == 0
    assert "cut short" in capsys.readouterr().err
    html = (folder / "report.html").read_text()
    md = (folder / "report.md").read_text()
    assert html.index("cut short") < html.index("<h2>")
    assert md.index("cut short") < md.index("\n## ")


def test_sweep_with_repeats(tmp_path: Path) -> None:
    folder = make_folder(tmp_path, rates=(80.0, 160.0), repeat=2)
    paths = write_report(folder)
    assert {p.stem for p in paths.plots} == PLOTS | {"latency_vs_rate", "theory_mean_vs_utilisation",
                                                     "theory_p99_vs_utilisation"}
    md = paths.markdown.read_text()
    assert "first rate, 80 rps (also measured: 160 rps)" in md
    assert "<b>Phases</b>" in md and "across repeats" in md
    lost = [f["lost"] for f in summary_of(folder)["frontends"]["userspace-dnat"]["failover"]]  # type: ignore[index]
    assert len(lost) == 2  # one per repeat, listed rather than averaged
    assert f"userspace-dnat lost {lost[0]}, {lost[1]} requests over" in md and "in its 2 repeats" in md
    phases = md[md.index("<b>Phases</b>") :].split("</details>")[0]
    assert phases.count("| userspace-dnat | 160 |") == 2  # one row per repeat
    _, problems = check(load_results(folder))
    assert problems == []


def test_no_events_no_samples_no_errors(tmp_path: Path) -> None:
    folder = make_folder(tmp_path, with_event=False, no_samples=("l7-proxy",))
    paths = write_report(folder)
    assert "failover" not in {p.stem for p in paths.plots}
    md = paths.markdown.read_text()
    assert "no timeline events fired" in md
    assert "During " not in md and "Failed requests: userspace-dnat none; l7-proxy none." in md


def test_only_skipped_front_ends(tmp_path: Path) -> None:
    folder = make_folder(tmp_path, frontends=(), skipped={"kernel-nftables": "needs a namespace"})
    paths = write_report(folder)
    assert paths.plots == ()
    md = paths.markdown.read_text()
    assert "<b>Skipped front ends</b>" in md and "| kernel-nftables | needs a namespace |" in md
    assert "No front end measured anything." in md


def test_generator_lateness_is_a_banner_only_when_large_against_the_latency(tmp_path: Path) -> None:
    folder = make_folder(tmp_path, saturated=("l7-proxy",))
    md = write_report(folder).markdown.read_text()
    banners = [line for line in md.splitlines() if line.startswith("> **")]
    # l7-proxy sent 20 ms late (p99) against latencies of a few ms: a banner; userspace-dnat's 0.5 ms is not
    assert len(banners) == 1, banners
    assert "sent late" in banners[0] and "l7-proxy @ 100 rps 20 ms" in banners[0]
    assert "userspace-dnat" not in banners[0]


def test_theory_as_lbbench_run_writes_it(reported: tuple[Path, ReportPaths]) -> None:
    folder, paths = reported
    theory = summary_of(folder)["frontends"]["userspace-dnat"]["theory"]  # type: ignore[index]
    assert theory["model"] == "random_split"
    md = paths.markdown.read_text()
    row = next(
        line
        for line in md.splitlines()
        if line.startswith("| userspace-dnat | 100 | random_split") and "| latency p99 |" in line
    )
    assert row.endswith(f"| {theory['rel_err_p99']:+.1%} |")
    assert f"{theory['predicted_p99_s'] * 1e3:.3g} ms" in row
    assert "- userspace-dnat: random_split: random DNAT per new connection" in md


def test_theory_plain_shape_and_no_model(folder: Path) -> None:
    data = summary_of(folder)
    fes = data["frontends"]
    assert isinstance(fes, dict)
    measured = fes["l7-proxy"]["latency_s"]["p99"]
    fes["l7-proxy"]["theory"] = {"model": "M/M/c", "p99_s": measured / 1.25, "mean_s": 0.004, "rho": 0.7}
    fes["userspace-dnat"]["theory"] = {"model": None, "reason": "keep-alive through DNAT"}
    (folder / "summary.json").write_text(json.dumps(data))
    md = write_report(folder).markdown.read_text()
    row = next(
        line for line in md.splitlines() if line.startswith("| l7-proxy | 100 | M/M/c | latency p99 |")
    )
    assert row.endswith("| +25.0% |")
    assert "| l7-proxy | 100 | M/M/c | rho | – | 0.7 | – |" in md
    assert "- userspace-dnat: no model: keep-alive through DNAT" in md


# -- lbbench report DIR -----------------------------------------------------------------------------
def test_report_cli_on_a_copy_reproduces_the_summary(
    folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    copy = tmp_path / "copied"
    shutil.copytree(folder, copy)
    assert main(["report", str(copy)]) == 0
    out, err = capsys.readouterr()
    assert "warning" not in err
    assert out.strip().splitlines()[-1] == str(copy / "report.html")
    lost = summary_of(folder)["frontends"]["userspace-dnat"]["failover"][0]["lost"]  # type: ignore[index]
    assert any(
        line.startswith("lost during failover") and line.split()[-2:] == [str(lost), "0"]
        for line in out.splitlines()
    )
    # a summary that does not match its rows is called out (and the exit code says so)
    data = summary_of(copy)
    data["frontends"]["l7-proxy"]["ok"] -= 1  # type: ignore[index]
    (copy / "summary.json").write_text(json.dumps(data))
    assert main(["report", str(copy)]) == 1
    assert "warning: summary.json disagrees with the rows: l7-proxy: ok" in capsys.readouterr().err


@pytest.mark.parametrize("case", ["missing", "file", "no_summary", "bad_json", "schema"])
def test_report_cli_bad_folder_exits_2(
    case: str, folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = {
        "missing": tmp_path / "nope",
        "file": folder / "events.csv",
        "no_summary": tmp_path / "empty",
        "bad_json": folder,
        "schema": folder,
    }[case]
    if case == "no_summary":
        target.mkdir()
    if case == "bad_json":
        (folder / "summary.json").write_text("{not json")
    if case == "schema":
        (folder / "summary.json").write_text(json.dumps({**summary_of(folder), "schema": 99}))
    assert main(["report", str(target)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lbbench report: error: ") and len(err.strip().splitlines()) == 1
    assert {
        "missing": "no such folder",
        "file": "not a folder",
        "no_summary": "no summary.json",
        "bad_json": "not valid JSON",
        "schema": "schema 99",
    }[case] in err
    assert not (folder / "report.html").exists()


def test_report_cli_in_a_subprocess_has_no_traceback(tmp_path: Path) -> None:
    proc = subprocess.run(
        lbbench_argv("report", str(tmp_path / "missing")),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "no such folder" in proc.stderr


# -- a real run -------------------------------------------------------------------------------------
REAL = """
[cluster]
nodes = 1
node_ip_base = {base}
service_cidr = "127.{svc}.0.0/16"
ingress_ip = "127.{svc}.1.1"
[[deployments]]
name = "web"
replicas = 3
[deployments.template]
service = "exp:4ms"
[deployments.template.readiness]
period = "50ms"
[[services]]
name = "web"
selector = {{ app = "web" }}
[load]
rate = 150
connections = "close"
[[events]]
at = "1.5s"
action = "kill_pod"
target = "deployment/web"
index = 0
[run]
seed = 3
endpoint_sync_delay = "700ms"
restart_delay = "300ms"
warmup = "200ms"
"""


@pytest.fixture(scope="module")
def real_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    tmp = tmp_path_factory.mktemp("real")
    base = random.randint(20, 70)  # own address block: no clash with a concurrent run
    cfg = tmp / "tiny.toml"
    cfg.write_text(REAL.format(base=base, svc=base + 120))
    out = tmp / "out"
    proc = subprocess.run(
        lbbench_argv(
            "run", str(cfg), "--frontends", "userspace-dnat", "--duration", "3s", "--out", str(out), "--quiet"
        ),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    yield out


@pytest.mark.slow
def test_real_run_report(real_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(real_run, copy)
    # whatever `lbbench run` wrote of the report goes: `lbbench report` must regenerate it from the data
    shutil.rmtree(copy / "plots", ignore_errors=True)
    (copy / "report.html").unlink(missing_ok=True)
    (copy / "report.md").unlink(missing_ok=True)
    assert main(["report", str(copy)]) == 0
    err = capsys.readouterr().err
    assert "warning" not in err, err
    assert (copy / "report.html").is_file() and len(list((copy / "plots").glob("*.png"))) >= 5
    fresh, problems = check(load_results(copy))
    assert problems == []
    dnat = summary_of(copy)["frontends"]["userspace-dnat"]  # type: ignore[index]
    assert fresh[0].requests == dnat["requests"] == dnat["ok"] + sum(dnat["errors"].values())
    lost = dnat["failover"][0]["lost"]
    assert lost > 0  # random DNAT sends to the killed pod until the endpoints sync
    md = (copy / "report.md").read_text()
    assert f"During kill_pod deployment/web at 1.5 s, userspace-dnat lost {lost} requests" in md


def test_pod_share_includes_pods_that_served_nothing() -> None:
    from lbbench.report.plots import with_idle_pods

    ev = pd.DataFrame({"kind": ["pod_ready", "pod_ready", "event"], "target": ["web-a", "web-idle", "x"]})
    assert with_idle_pods({"web-a": 1.0}, ev) == {"web-a": 1.0, "web-idle": 0.0}


@pytest.mark.parametrize("count", [4, 5])
def test_pod_share_draws_a_panel_per_front_end_when_the_grid_has_spare_panels(tmp_path: Path, count: int) -> None:
    # three panels a row: 4 or 5 front ends leave empty panels in the last row (5 once crashed the report)
    from lbbench.report.plots import pod_share

    names = ("userspace-dnat", "l7-proxy", "haproxy", "nginx", "httpd")[:count]
    results = load_results(make_folder(tmp_path, frontends=names))
    (tmp_path / "plots").mkdir(exist_ok=True)
    plot = pod_share(results, tmp_path / "plots")
    assert not isinstance(plot, str), plot
    assert (tmp_path / "plots" / "pod_share.png").read_bytes()[:4] == b"\x89PNG"
