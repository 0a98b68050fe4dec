"""Two runs at once never measure each other's pods (issue 20.1).

Each run lives in its own network namespace when it can; with `--no-netns` it claims its
address blocks with a lock instead. A process squatting on a pod's address answers the
readiness probe, but never in that pod's name, so the pod never becomes ready.
"""

from __future__ import annotations

import http.server
import json
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from lbbench.system.netns import namespace_unavailable_reason
from lbbench.system.procs import lbbench_argv

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]  # two runs, one after the other (the lock)

BASE = 79  # pods in 127.79.0.0/16; the first pod's address is 127.79.0.2
CONFIG = f"""
[cluster]
node_ip_base = {BASE}
service_cidr = "127.179.0.0/16"
lb_cidr = "127.180.0.0/16"
ingress_ip = "127.179.1.1"
dns = "127.179.2.1:5353"
[[deployments]]
name = "web"
replicas = 2
[deployments.template]
service = "const:2ms"
[deployments.template.readiness]
period = "50ms"
[[services]]
name = "web"
selector = {{ app = "web" }}
[load]
rate = 40
connections = "close"
[run]
duration = "3s"
warmup = "200ms"
endpoint_sync_delay = "200ms"
restart_delay = "200ms"
frontends = ["userspace-dnat"]
"""


class _Squatter(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("x-pod", "somebody-else")
        self.send_header("Content-Length", "3")
        self.end_headers()
        self.wfile.write(b"ok\n")

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def squatter() -> Iterator[str]:
    """A foreign HTTP server on the address the first pod of the run will be given."""
    server = http.server.ThreadingHTTPServer((f"127.{BASE}.0.2", 8080), _Squatter)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.{BASE}.0.2"
    finally:
        server.shutdown()
        server.server_close()


def _start(tmp_path: Path, name: str, seed: int, *extra: str) -> tuple[subprocess.Popen[str], Path]:
    config = tmp_path / "iso.toml"
    config.write_text(CONFIG)
    out = tmp_path / name
    argv = lbbench_argv("run", str(config), "--out", str(out), "--quiet", "--seed", str(seed), *extra)
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True), out


def _own_pods(out: Path) -> tuple[set[str], set[str], dict[str, str]]:
    """(pods started, pods ready, ip by pod) from the run's own events.csv."""
    events = pd.read_csv(out / "events.csv", keep_default_na=False)
    started = events[events["kind"] == "pod_started"]
    ips = {row.target: row.detail.split()[0].removeprefix("ip=") for row in started.itertuples()}
    return set(started["target"]), set(events.loc[events["kind"] == "pod_ready", "target"]), ips


def _check_both(runs: list[tuple[subprocess.Popen[str], Path]]) -> list[set[str]]:
    served: list[set[str]] = []
    for proc, out in runs:
        _, err = proc.communicate(timeout=240)
        assert proc.returncode == 0, err[-2000:]
        assert "Traceback" not in err, err[-3000:]
        assert json.loads((out / "summary.json").read_text())["complete"] is True
        rows = pd.read_parquet(out / "requests.parquet")
        pods = set(rows.loc[rows["pod"] != "", "pod"])
        started, _, _ = _own_pods(out)
        assert pods and pods <= started, f"{out.name} was served by pods it never started: {pods - started}"
        served.append(pods)
    assert not served[0] & served[1]
    return served


def test_two_runs_without_namespaces_claim_their_addresses(tmp_path: Path, squatter: str) -> None:
    runs = [_start(tmp_path, "a", 1, "--no-netns"), _start(tmp_path, "b", 2, "--no-netns")]
    _check_both(runs)
    for _, out in runs:
        _, ready, ips = _own_pods(out)
        summary = json.loads((out / "summary.json").read_text())
        assert summary["metadata"]["isolation"].startswith("address blocks claimed with a lock")
        squatted = [p for p, ip in ips.items() if ip == squatter]
        assert squatted, "the first pod is given the squatted address"
        assert not set(squatted) & ready  # the squatter answered its probes, never in its name
        assert len(ready) >= 2  # replaced on fresh addresses


@pytest.mark.skipif(namespace_unavailable_reason() is not None,
                    reason=f"no private network namespace: {namespace_unavailable_reason()}")
def test_two_runs_in_namespaces_never_meet(tmp_path: Path) -> None:
    runs = [_start(tmp_path, "a", 1), _start(tmp_path, "b", 2)]
    _check_both(runs)
    for _, out in runs:
        summary = json.loads((out / "summary.json").read_text())
        assert summary["metadata"]["isolation"] == "private network namespace"
        assert summary["metadata"]["in_netns"] is True


def test_network_faults_are_skipped_with_the_reason_without_a_namespace(tmp_path: Path) -> None:
    config = tmp_path / "iso.toml"
    config.write_text(CONFIG + '\n[[events]]\nat = "1s"\naction = "packet_loss"\ntarget = "service/web"\n')
    out = tmp_path / "skip"
    proc = subprocess.run(lbbench_argv("run", str(config), "--out", str(out), "--quiet", "--no-netns"),
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]  # the rest of the run goes on
    summary = json.loads((out / "summary.json").read_text())
    why = summary["metadata"]["network_faults_unavailable"]
    assert "not in a private network namespace" in why and "--no-netns" in why
    events = pd.read_csv(out / "events.csv", keep_default_na=False)
    skipped = events[events["kind"] == "network_fault_skipped"]
    assert len(skipped) == 1 and "packet_loss" in skipped["detail"].iloc[0]
    assert "network_fault" not in set(events["kind"])
    assert "not played (packet_loss: the run is not in a private network namespace" in \
        (out / "report.md").read_text()
