"""The Service-count sweep: [scale] config, seeded positions, the connect probe, the verdict, and a small sweep."""

from __future__ import annotations

import http.server
import json
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_kernel_sync import sync_scenario

from lbbench.config.parse import parse_config
from lbbench.errors import ConfigError
from lbbench.model.addresses import HostPort
from lbbench.report.scale import verdict
from lbbench.run.scale_layout import build_layout, positions_for
from lbbench.run.scale_probe import probe, response_state
from lbbench.system.netns import netns_unavailable_reason
from lbbench.system.procs import Supervisor, lbbench_argv

needs_netns = pytest.mark.skipif(netns_unavailable_reason() is not None,
                                 reason=f"no private network namespace: {netns_unavailable_reason()}")
BASE = {
    "deployments": [{"name": "web", "replicas": 2, "template": {"service": "const:0ms", "slots": 8}}],
    "services": [{"name": "web", "selector": {"app": "web"}, "port": 8080, "targetPort": 8080}],
    "load": {"service": "web", "rate": 100},
}


def test_scale_table_is_optional_and_validated() -> None:
    assert parse_config("c.toml", dict(BASE)).scale is None
    c = parse_config("c.toml", {**BASE, "scale": {"services": [2000, 10], "iptables_backends": ["legacy", "nft"]}})
    assert c.scale is not None and c.scale.services == (10, 2000) and c.scale.iptables_backends == ("legacy", "nft")
    for bad, where in (({"services": [0]}, "scale.services"), ({"services": [1.5]}, "scale.services"),
                       ({"under_test": 50}, "scale.under_test"),
                       ({"services": [3], "under_test": 5}, "scale.under_test"),
                       ({"iptables_backends": ["ipvs"]}, "scale.iptables_backends[0]"),
                       ({"rate": 0}, "scale.rate"), ({"typo": 1}, "scale.typo")):
        with pytest.raises(ConfigError) as e:
            parse_config("c.toml", {**BASE, "scale": bad})
        assert where in str(e.value)


def test_services_under_test_sit_where_the_seed_put_them() -> None:
    pods = [HostPort("127.200.0.1", 8080), HostPort("127.200.0.2", 8080)]
    layout = build_layout(2000, 3, 5, seed=7, pods=pods)
    assert list(layout.positions.values()) == positions_for(2000, 5, 7)
    assert positions_for(2000, 5, 7) != positions_for(2000, 5, 8)  # another seed, other positions
    assert positions_for(2000, 5, 7) == positions_for(2000, 5, 7)
    for key, pos in layout.positions.items():
        assert layout.services[pos].key == key
        assert [ep.addr for ep in layout.endpoints[key]] == pods
    assert len({s.cluster_ip for s in layout.services}) == 2000
    assert layout.endpoint_count == 1995 * 3 + 5 * 2
    fake = {ep.ip for k, eps in layout.endpoints.items() if k not in layout.positions for ep in eps}
    assert len(fake) == 1995 * 3 and not fake & {p.host for p in pods}
    assert layout.changed_service().key not in layout.positions


@pytest.mark.netns
@needs_netns
def test_kube_services_order_in_the_kernel_follows_the_seeded_positions(supervisor: Supervisor) -> None:
    out = sync_scenario(supervisor, "positions")
    assert out["kernel"] == out["layout"] and out["layout"] == dict(
        zip(out["layout"], positions_for(2000, 5, 7), strict=True))


def test_response_state_waits_for_the_whole_body() -> None:
    assert response_state(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nabc") is None
    assert response_state(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nabcde") == ""
    assert response_state(b"HTTP/1.1 503 Busy\r\ncontent-length: 0\r\n\r\n") == "status 503"
    assert response_state(b"HTTP/1.1 200 OK\r\n") is None


class _Ok(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def http_server() -> Iterator[HostPort]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Ok)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield HostPort("127.0.0.1", server.server_address[1])
    server.shutdown()
    server.server_close()


def _closed_port() -> HostPort:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return HostPort("127.0.0.1", s.getsockname()[1])  # nothing listens once closed


def test_probe_times_every_connection_and_keeps_failures(http_server: HostPort) -> None:
    rows = probe([http_server, _closed_port()], 40, 400.0)
    assert rows.target == [i % 2 for i in range(40)]
    served = [i for i in range(40) if rows.target[i] == 0]
    refused = [i for i in range(40) if rows.target[i] == 1]
    assert all(rows.error[i] == "" and rows.connect_ns[i] > 0 and rows.request_ns[i] >= rows.connect_ns[i]
               for i in served)
    assert all(rows.error[i] == "connect: ConnectionRefusedError" and rows.connect_ns[i] == -1
               and rows.request_ns[i] == -1 for i in refused)


def _cells(ipt: list[tuple[float, float]], nft: list[tuple[float, float]]) -> dict[str, dict[int, dict[str, Any]]]:
    def cell(p01: float, p50: float) -> dict[str, Any]:
        return {"pooled": {"connect_us": {"p01": p01, "p50": p50, "p99": p50 * 2, "n": 1000}}}

    counts = (10, 1000, 10_000)
    return {"kernel-iptables-legacy": {c: cell(*v) for c, v in zip(counts, ipt, strict=True)},
            "kernel-nftables": {c: cell(*v) for c, v in zip(counts, nft, strict=True)}}


def test_verdict_names_the_blogs_shape_and_its_absence() -> None:
    blog = _cells([(24, 53), (37, 86), (121, 177)], [(21, 46), (23, 56), (24, 71)])  # the hand check
    text = verdict(blog)
    assert text.startswith("lbbench reproduces") and "10,000 Services" in text and "177 us" in text
    flat = _cells([(24, 53), (25, 54), (24, 55)], [(21, 46), (23, 56), (24, 71)])
    assert verdict(flat).startswith("lbbench does not reproduce")
    assert verdict({"kernel-nftables": blog["kernel-nftables"]}).startswith("No verdict")


TINY = """
[[deployments]]
name = "web"
replicas = 2
[deployments.template]
service = "const:0ms"
slots = 8

[[services]]
name = "web"
selector = { app = "web" }
port = 8080
targetPort = 8080

[load]
service = "web"
rate = 100

[run]
seed = 3
frontends = ["kernel-iptables", "kernel-nftables", "userspace-dnat", "l7-proxy"]

[scale]
services = [10, 2000]
under_test = 3
connections = 150
rate = 300
endpoint_changes = 2
full_resyncs = 1
"""


@pytest.mark.netns
@pytest.mark.slow
@needs_netns
def test_a_small_sweep_installs_what_it_should_and_every_service_answers(tmp_path: Path,
                                                                          supervisor: Supervisor) -> None:
    (tmp_path / "tiny.toml").write_text(TINY)
    out = tmp_path / "out"
    child = supervisor.spawn("sweep", lbbench_argv("run", str(tmp_path / "tiny.toml"), "--out", str(out), "--quiet"),
                             stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, err = child.popen.communicate(timeout=600)
    assert child.popen.returncode == 0, err.decode()[-3000:]
    scale = json.loads((out / "summary.json").read_text())["scale"]
    assert set(scale["frontends"]) == {"kernel-iptables-legacy", "kernel-nftables", "userspace-dnat"}
    assert "l7-proxy" in scale["skipped"]
    for label, fe in scale["frontends"].items():
        assert set(fe["counts"]) == {"10", "2000"}, label
        for count, entry in fe["counts"].items():
            assert entry["installed"]["match"], (label, count, entry["installed"])
            assert entry["answered"] and entry["pooled"]["failed"] == 0, (label, count, entry["pooled"])
            assert entry["pooled"]["connect_us"]["n"] == 150
            assert list(entry["positions"].values()) == positions_for(int(count), 3, 3)
            assert entry["sync"]["endpoint_change"]["n"] == 2 and entry["sync"]["full_resync"]["n"] == 1
    nft = scale["frontends"]["kernel-nftables"]["counts"]["2000"]
    assert nft["counters"]["sync_services_max"] == 2000
    report = (out / "report.md").read_text()
    assert "Service-count sweep" in report and "published shape" in report
    assert (out / "plots" / "scale_connect.png").exists() and (out / "plots" / "scale_sync.png").exists()
