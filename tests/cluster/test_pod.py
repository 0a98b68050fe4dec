from __future__ import annotations

import concurrent.futures
import json
import signal
import subprocess
import time
import urllib.error
import urllib.request

import pytest

from lbbench.cluster.standalone import start_pod
from lbbench.system.control import send
from lbbench.system.procs import Supervisor, lbbench_argv


def get(url: str) -> tuple[int, dict[str, str], bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, {k.lower(): v for k, v in r.headers.items()}, r.read()
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read()


def test_pod_answers_with_identity_and_timing_headers(supervisor: Supervisor) -> None:
    _, addr = start_pod(supervisor, "web-a", service="const:20ms")
    status, headers, body = get(f"http://{addr}/?size=100")
    assert status == 200
    assert body == b"x" * 100
    assert headers["x-pod"] == "web-a"
    assert headers["x-pod-ip"] == addr.host
    assert float(headers["x-queue-ms"]) >= 0
    assert 19.0 <= float(headers["x-service-ms"]) < 200


def test_slots_queue_fifo_in_the_pod(supervisor: Supervisor) -> None:
    """slots=1 and 4 concurrent 50 ms requests: three of them wait in the pod's queue."""
    _, addr = start_pod(supervisor, "q", service="const:50ms", slots=1)
    with concurrent.futures.ThreadPoolExecutor(4) as ex:
        results = list(ex.map(lambda _: get(f"http://{addr}/"), range(4)))
    queues = sorted(float(h["x-queue-ms"]) for _, h, _ in results)
    assert queues[0] < 25
    assert queues[-1] >= 100  # the last one waited for (at least) two others


def test_fault_query_parameters(supervisor: Supervisor) -> None:
    _, addr = start_pod(supervisor, "f")
    assert get(f"http://{addr}/?status=418:100")[0] == 418
    assert get(f"http://{addr}/?status=418:0")[0] == 200
    with pytest.raises((urllib.error.URLError, ConnectionError)):
        get(f"http://{addr}/?close=100")


def test_control_pipe_changes_faults_and_readiness(supervisor: Supervisor) -> None:
    child, addr = start_pod(supervisor, "c")
    assert send(child.stdin, {"faults": {"ready": False, "error_rate": 1.0}})
    time.sleep(0.2)
    assert get(f"http://{addr}/healthz")[0] == 503
    assert get(f"http://{addr}/")[0] == 503
    stats = json.loads(get(f"http://{addr}/_lbbench/stats")[2])
    assert stats["faults"]["ready"] is False


def test_sigterm_finishes_in_flight_requests(supervisor: Supervisor) -> None:
    child, addr = start_pod(supervisor, "g", service="const:500ms")
    with concurrent.futures.ThreadPoolExecutor(1) as ex:
        fut = ex.submit(get, f"http://{addr}/")
        time.sleep(0.2)
        child.signal(signal.SIGTERM)
        assert fut.result()[0] == 200
    assert child.popen.wait(5) == 0


def test_pod_exits_when_parent_pipe_closes(supervisor: Supervisor) -> None:
    child, _ = start_pod(supervisor, "w")
    assert child.stdin is not None
    child.stdin.close()
    assert child.popen.wait(3) == 0


def test_bad_pod_arguments_exit_2_without_traceback() -> None:
    for argv in (["--listen", "10.1.2.3:80"], ["--listen", "127.0.0.1:80", "--service", "zipf:3"],
                 ["--listen", "127.0.0.1:80", "--slots", "0"]):
        proc = subprocess.run([*lbbench_argv("serve", "pod"), *argv], capture_output=True, text=True, timeout=30)
        assert proc.returncode == 2, proc.stderr
        assert "Traceback" not in proc.stderr
        assert "error" in proc.stderr
