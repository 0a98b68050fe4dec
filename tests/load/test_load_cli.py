"""`lbbench load` as a user runs it: a real process against a real pod."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from lbbench.cluster.standalone import start_pod
from lbbench.model.addresses import HostPort
from lbbench.system.procs import Supervisor, lbbench_argv


def load(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(lbbench_argv("load", *args), capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def pod(supervisor: Supervisor) -> HostPort:
    return start_pod(supervisor, "cli-pod", service="const:1ms", slots=4)[1]


def test_json_output(pod: HostPort) -> None:
    proc = load(f"http://{pod}/?status=503:10", "--rate", "200", "--duration", "1s", "--json", "--seed", "3")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["requested_rps"] == 200 and out["achieved_rps"] == pytest.approx(200, rel=0.05)
    assert out["requests"] == 200 and out["ok"] + out["errors"]["http_5xx"] == 200
    assert 0 < out["errors"]["http_5xx"] < 60
    assert set(out["errors"]) == {"refused", "reset", "timeout", "connect_timeout", "unreachable", "truncated",
                                  "http_5xx", "http_4xx", "other"}
    assert set(out["latency_s"]) == {"mean", "p50", "p90", "p99", "p999", "max"}
    assert set(out["lateness_s"]) == {"p50", "p99", "max"}
    assert out["latency_s"]["p50"] >= 0.001  # the pod's 1 ms service time is in there
    assert isinstance(out["generator_saturated"], bool)
    assert out["mode"] == "open" and out["connections"] == "close" and out["workers"] == 1
    assert out["requested_duration_s"] == 1.0 and out["actual_duration_s"] >= 1.0


def test_cpu_is_judged_only_over_a_second_of_sending(pod: HostPort) -> None:
    short = json.loads(load(f"http://{pod}/", "--rate", "100", "--duration", "0.5s", "--json").stdout)
    assert short["worker_cpu_fraction"] == [None] and short["worker_cpu_s"][0] > 0
    assert "CPU" not in (short["saturation_reason"] or "")
    longer = json.loads(load(f"http://{pod}/", "--rate", "100", "--duration", "1.5s", "--json").stdout)
    assert 0 < longer["worker_cpu_fraction"][0] < 0.9  # 100 rps of 1 ms requests: far from a saturated core


def test_text_output_and_out_dir(pod: HostPort, tmp_path: Path) -> None:
    proc = load(f"http://{pod}/", "--rate", "150", "--duration", "1s", "--connections", "keepalive:2",
                "--arrivals", "constant", "--out", str(tmp_path / "run"))
    assert proc.returncode == 0, proc.stderr
    for word in ("requested", "actual", "lateness", "generator CPU", "p999", "keepalive:2"):
        assert word in proc.stdout
    rows = pd.read_parquet(tmp_path / "run" / "requests.parquet")
    assert list(rows.columns) == ["intended_s", "sent_s", "done_s", "latency_s", "status", "error", "pod", "pod_ip",
                                  "conn_id", "new_conn", "worker", "queue_ms", "service_ms", "proxy_queue_ms",
                                  "proxy_upstream_ms"]
    assert len(rows) == 150 and set(rows.pod) == {"cli-pod"} and rows.conn_id.nunique() == 2
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["requests"] == 150 and summary["schema"] == "lbbench.load.summary/1"
    assert summary["latency_histogram"]["count"] == 150 and summary["spec"]["arrivals"] == "constant"


def test_closed_loop_is_labelled(pod: HostPort) -> None:
    proc = load(f"http://{pod}/", "--closed-loop", "2", "--think-time", "5ms", "--duration", "1s", "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["mode"] == "closed" and out["closed_loop_users"] == 2 and out["requested_rps"] is None
    text = load(f"http://{pod}/", "--closed-loop", "2", "--duration", "0.5s").stdout
    assert "CLOSED loop" in text


@pytest.mark.parametrize(("args", "message"), [
    (["http://10.1.2.3:80/"], "127.0.0.0/8"),
    (["https://127.0.0.1/"], "http://"),
    (["http://web.default.svc.cluster.local/"], "--dns"),
    (["http://127.0.0.1:80/", "--connections", "pool"], "keepalive:K"),
    (["http://127.0.0.1:80/", "--rate", "0"], "rate"),
    (["http://127.0.0.1:80/", "--step", "soon:5"], "duration"),
    (["http://127.0.0.1:80/", "--duration", "forever"], "duration"),
    (["http://127.0.0.1:80/", "--dns", "8.8.8.8:53"], "127.0.0.0/8"),
    (["http://127.0.0.1:80/", "--workers", "3", "--connections", "keepalive:2"], "keep-alive"),
    (["http://127.0.0.1:80/", "--part", "3/3"], "--part"),
    (["http://127.0.0.1:80/", "--start-at", "nan"], "--start-at"),
])
def test_bad_input_is_one_clear_line(args: list[str], message: str) -> None:
    proc = load(*args)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("lbbench load: error:")


def _free_port(ip: str) -> int:
    with socket.socket() as s:
        s.bind((ip, 0))
        return int(s.getsockname()[1])


def test_localhost_needs_no_dns(supervisor: Supervisor) -> None:
    port = _free_port("127.0.0.1")
    start_pod(supervisor, "local", ip="127.0.0.1", port=port)
    proc = load(f"http://localhost:{port}/", "--rate", "50", "--duration", "0.5s", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["ok"] == 25


@pytest.fixture
def cluster_dns(pod: HostPort) -> Iterator[HostPort]:
    """lbbench's cluster DNS on its own loop in a thread, answering web.default.svc.cluster.local."""
    from lbbench.cluster.dns import ClusterDns

    loop = asyncio.new_event_loop()
    dns = ClusterDns()
    dns.set_record("web.default.svc.cluster.local", pod.host)
    addr = loop.run_until_complete(dns.start(HostPort("127.0.0.1", 0)))
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield addr
    finally:
        asyncio.run_coroutine_threadsafe(dns.stop(), loop).result(5)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()


def test_names_resolve_through_cluster_dns(pod: HostPort, cluster_dns: HostPort) -> None:
    proc = load(f"http://web.default.svc.cluster.local:{pod.port}/", "--dns", str(cluster_dns),
                "--rate", "50", "--duration", "0.5s", "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["ok"] == 25 and out["target"] == str(pod)
    missing = load(f"http://nope.default.svc.cluster.local:{pod.port}/", "--dns", str(cluster_dns))
    assert missing.returncode == 2 and "nope.default.svc.cluster.local" in missing.stderr


def _wait_served(pod: HostPort, n: int, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with urllib.request.urlopen(f"http://{pod}/_lbbench/stats", timeout=5) as r:
            if json.loads(r.read())["served"] >= n:
                return
        time.sleep(0.1)
    raise AssertionError(f"the pod never served {n} requests")


def test_ctrl_c_stops_early_and_still_reports(pod: HostPort) -> None:
    cli = subprocess.Popen(lbbench_argv("load", f"http://{pod}/", "--rate", "100", "--duration", "30s"),
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_served(pod, 50)  # sending for a while: a Ctrl-C during start-up has nothing to report
        t0 = time.monotonic()
        cli.send_signal(signal.SIGINT)
        out, err = cli.communicate(timeout=15)
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.communicate()
    assert cli.returncode == 130, err
    assert time.monotonic() - t0 < 10
    assert "STOPPED" in out and "stopping" in err


def test_unwritable_out_is_refused_before_any_request(tmp_path: Path) -> None:
    a_file = tmp_path / "file"
    a_file.write_text("")
    for out, expected in ((a_file, "not a folder"), (Path("/proc/lbbench-load"), "cannot write")):
        proc = load("http://127.0.0.1:9/", "--rate", "10", "--duration", "1s", "--out", str(out))
        assert proc.returncode == 2 and "Traceback" not in proc.stderr
        [line] = proc.stderr.strip().splitlines()
        assert f"--out {out}" in line and expected in line
        assert proc.stdout == ""  # no load ran, so no summary


def test_wrk2_flags_rate_per_second_and_checks(pod: HostPort) -> None:
    """-R 200/s -d 1s -c 4 as wrk2 users type them; a passing and a failing check; exit 3 on failure."""
    proc = load(f"http://{pod}/?status=503:10", "-R", "200/s", "-d", "1s", "-c", "4", "--json", "--seed", "3",
                "--check", "*.requests == 200", "--check", "*.errors_pct < 0.5")
    assert proc.returncode == 3, proc.stderr
    out = json.loads(proc.stdout.split("\ncheck passed")[0])
    assert out["requested_rps"] == 200 and out["connections"] == "keepalive:4"
    assert "check passed: *.requests == 200" in proc.stdout
    assert "check failed: *.errors_pct < 0.5" in proc.stderr


def test_no_request_succeeded_is_a_failure(supervisor: Supervisor) -> None:
    port = _free_port("127.0.0.1")  # nothing listens: every request is refused
    proc = load(f"http://127.0.0.1:{port}/", "--rate", "50", "--duration", "500ms")
    assert proc.returncode == 1, proc.stdout
    assert "no request succeeded (25 sent)" in proc.stderr
