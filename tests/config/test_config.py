"""Bad input: every case exits 2 with the file, the key path and the expectation; no traceback."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from lbbench.config.parse import load_config
from lbbench.system.procs import lbbench_argv

GOOD = """
[cluster]
nodes = 2
[[deployments]]
name = "web"
replicas = 2
[deployments.template]
service = "exp:10ms"
[[services]]
name = "web"
selector = { app = "web" }
port = 8080
[load]
service = "web"
rate = 50
[run]
duration = "2s"
frontends = ["userspace-dnat"]
"""


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(lbbench_argv(*args), capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize(
    ("old", "new", "key_path", "expectation"),
    [
        ("replicas = 2", "replicass = 2", "deployments[0].replicass", "unknown key"),
        ("replicas = 2", 'replicas = "two"', "deployments[0].replicas", "expected an integer"),
        ("replicas = 2", "replicas = -1", "deployments[0].replicas", "must be >= 0"),
        ('selector = { app = "web" }', 'selector = { app = "nope" }', "services[0].selector", "matches no"),
        ("nodes = 2", 'nodes = 2\ningress_ip = "10.1.2.3"', "cluster.ingress_ip", "127.0.0.0/8"),
        ("nodes = 2", 'nodes = 2\nservice_cidr = "192.168.0.0/16"', "cluster.service_cidr", "127.0.0.0/8"),
        ("port = 8080", "port = 8080\ntype = \"NodePort\"\nnodePort = 80", "services[0].nodePort", ">= 30000"),
        ('service = "exp:10ms"', 'service = "zipf:3"', "deployments[0].template.service", "exp:"),
        ('frontends = ["userspace-dnat"]', 'frontends = ["ipvs"]', "run.frontends[0]", "unknown front end"),
        ('duration = "2s"', 'duration = "soon"', "run.duration", "expected a duration"),
        ("rate = 50", "rate = 50\nconnections = \"pooled\"", "load.connections", "keepalive:K"),
        ('service = "exp:10ms"', 'service = "exp:10"', "deployments[0].template.service",
         "exp:10: give a unit, e.g. 10ms"),
        ('duration = "2s"', 'duration = "2"', "run.duration", "give a unit"),
        ('duration = "2s"', "duration = 2", "run.duration", "give a unit"),
        ("[run]", "[report]\nslo = \"fast\"\n[run]", "report.slo", "expected a duration"),
        ("[run]", "[theory]\ntolerence = 0.1\n[run]", "theory.tolerence", "unknown key"),
        ("[run]", "[[checks]]\ncheck = \"l7-proxy.p99 < 200\"\n[run]", "checks[0].check", "needs a unit"),
        ("[run]", "[[checks]]\ncheck = \"l7-proxy.speed > 1\"\n[run]", "checks[0].check", "unknown metric"),
        ("[run]", "[[events]]\nat = \"1s\"\naction = \"kill_pod\"\ntarget = \"deployment/api\"\n[run]",
         "events[0].target", "no deployment named 'api'"),
        ("rate = 50", 'rate = 50\npath = "http://10.0.0.1/"', "load.path", "request path"),
        ("rate = 50", 'rate = 50\npath = "/a b"', "load.path", "no spaces"),
        ("[load]", '[[services]]\nname = "web"\nselector = { app = "web" }\n[load]', "services[1].name",
         "already exists in namespace 'default' (services[0])"),
        ('frontends = ["userspace-dnat"]', 'frontends = ["l7-proxy", "l7-proxy"]', "run.frontends[1]",
         "listed twice"),
        ("[run]", "[[events]]\nat = \"1s\"\naction = \"kill_pod\"\ntarget = \"deployment/web\"\nindex = 99\n[run]",
         "events[0].index", "below 2 (deployment/web has 2 replicas at 1s), got 99"),
        ("[run]", "[[events]]\nat = \"1s\"\naction = \"kill_pod\"\ntarget = \"deployment/web\"\nindex = 2\n[run]",
         "events[0].index", "below 2"),
        ("[run]", "[[events]]\nat = \"1s\"\naction = \"scale\"\ntarget = \"deployment/web\"\nreplicas = 1\n"
                  "[[events]]\nat = \"0.5s\"\naction = \"kill_pod\"\ntarget = \"deployment/web\"\nindex = 1\n"
                  "[[events]]\nat = \"1.5s\"\naction = \"kill_pod\"\ntarget = \"deployment/web\"\nindex = 1\n[run]",
         "events[2].index", "(deployment/web has 1 replicas at 1.5s), got 1"),
        ("[run]", "[[events]]\nat = \"1s\"\naction = \"kill_pod\"\ntarget = \"pod/web-0\"\nindex = 0\n[run]",
         "events[0].index", "takes none"),
        ("[run]", "[[events]]\nat = \"1s\"\naction = \"partition\"\ntarget = \"deployment/web\"\n[run]",
         "events[0].target", "partition takes node/NAME"),
        ("[run]", "[[events]]\nat = \"1s\"\naction = \"packet_loss\"\ntarget = \"service/api\"\n[run]",
         "events[0].target", "no Service named 'api'"),
        ("[run]", "[[events]]\nat = \"1s\"\naction = \"packet_loss\"\ntarget = \"service/web\"\n"
                  "percent = 150\n[run]", "events[0].percent", "100"),
        ("[run]", "[[events]]\nat = \"1s\"\naction = \"partition\"\ntarget = \"node/node-1\"\n"
                  "duration = \"soon\"\n[run]", "events[0].duration", "expected a duration"),
        ("[run]", "[proxy]\nworkers = 0\n[run]", "proxy.workers", ">= 1"),
        ("rate = 50", 'rate = 50\nvia = ["ClusterIP", "Nodeport"]', "load.via", "got 'Nodeport'"),
        ("rate = 50", "rate = 50\nvia = []", "load.via", "a list of distinct ones; got []"),
        ("rate = 50", 'rate = 50\nvia = ["ClusterIP", "ClusterIP"]', "load.via", "distinct"),
        ("rate = 50", "rate = 50\nvia = [1]", "load.via", "expected an array of strings"),
        ("rate = 50", 'rate = 50\nvia = ["ClusterIP", "NodePort"]', "load.via",
         "is of type ClusterIP; it cannot be reached via NodePort"),
    ],
)
def test_bad_config_exits_2_with_key_path(tmp_path: Path, old: str, new: str, key_path: str,
                                          expectation: str) -> None:
    assert old in GOOD
    path = tmp_path / "bad.toml"
    path.write_text(GOOD.replace(old, new, 1))
    proc = run_cli("run", str(path), "--quiet")
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert str(path) in proc.stderr
    assert key_path in proc.stderr
    assert expectation in proc.stderr


def test_missing_file_and_invalid_toml(tmp_path: Path) -> None:
    missing = run_cli("run", str(tmp_path / "nope.toml"))
    assert missing.returncode == 2 and "no such file" in missing.stderr and "Traceback" not in missing.stderr
    broken = tmp_path / "broken.toml"
    broken.write_text("[cluster\nnodes = 2\n")
    proc = run_cli("run", str(broken))
    assert proc.returncode == 2 and "invalid TOML" in proc.stderr and str(broken) in proc.stderr
    assert "Traceback" not in proc.stderr


def test_defaults_filled_in(tmp_path: Path) -> None:
    path = tmp_path / "good.toml"
    path.write_text(GOOD)
    c = load_config(path)
    assert c.workloads[0].template.slots == 1
    assert c.services[0].target_port == 8080
    assert c.run.endpoint_sync_delay_s == 1.0
    assert c.load.rates_rps == (50.0,)
    assert c.proxy.workers == 1  # the single central queue the theory models


@pytest.mark.parametrize("config", sorted(Path("configs").glob("*.toml")), ids=lambda p: p.name)
def test_shipped_configs_are_valid(config: Path) -> None:
    load_config(config)


def test_bad_cli_overrides() -> None:
    proc = run_cli("run", "configs/quickstart.toml", "--frontends", "ipvs")
    assert proc.returncode == 2 and "--frontends" in proc.stderr and "Traceback" not in proc.stderr


def test_index_within_the_replicas_a_scale_left(tmp_path: Path) -> None:
    """Scaled up to 5 at 1 s, index 4 exists from then on."""
    events = ('[[events]]\nat = "1s"\naction = "scale"\ntarget = "deployment/web"\nreplicas = 5\n'
              '[[events]]\nat = "1.5s"\naction = "kill_pod"\ntarget = "deployment/web"\nindex = 4\n[run]')
    path = tmp_path / "scaled.toml"
    path.write_text(GOOD.replace("[run]", events, 1))
    assert load_config(path).events[1].index == 4


def test_a_leading_byte_order_mark_is_accepted(tmp_path: Path) -> None:
    """TOML 1.0 asks for a UTF-8 document; a leading BOM keeps it one (toml-lang/toml#437): dropped."""
    path = tmp_path / "bom.toml"
    path.write_bytes(b"\xef\xbb\xbf" + GOOD.encode())
    assert load_config(path).load.rates_rps == (50.0,)


def test_a_byte_order_mark_elsewhere_and_other_encodings_get_one_line(tmp_path: Path) -> None:
    inner = tmp_path / "inner-bom.toml"
    inner.write_bytes(GOOD.replace("[load]", "\ufeff[load]").encode())
    latin = tmp_path / "latin1.toml"
    latin.write_bytes(GOOD.replace('name = "web"', 'name = "w\xe9b"', 1).encode("latin-1"))
    for path, expectation in ((inner, "invalid TOML"), (latin, "expected UTF-8 text")):
        proc = run_cli("run", str(path), "--quiet")
        assert proc.returncode == 2, proc.stderr
        assert "Traceback" not in proc.stderr and str(path) in proc.stderr and expectation in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_via_list_is_a_sweep_and_a_string_is_one_path(tmp_path: Path) -> None:
    lb = GOOD.replace("port = 8080", 'port = 8080\ntype = "LoadBalancer"', 1)
    path = tmp_path / "via.toml"
    path.write_text(lb.replace("rate = 50", 'rate = 50\nvia = ["NodePort", "LoadBalancer"]', 1))
    c = load_config(path)
    assert (c.load.via, c.load.vias) == ("NodePort", ("NodePort", "LoadBalancer"))
    path.write_text(lb.replace("rate = 50", 'rate = 50\nvia = "LoadBalancer"', 1))
    c = load_config(path)
    assert (c.load.via, c.load.vias) == ("LoadBalancer", ("LoadBalancer",))
