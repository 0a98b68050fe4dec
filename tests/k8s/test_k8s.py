"""`lbbench k8s render`: manifests for every shipped config, validated offline against the OpenAPI
schemas of a pinned Kubernetes version (kubernetes-validate, strict: unknown fields are errors);
golden files for configs/quickstart.toml; the scripts' syntax and the failure timeline's timing.

Regenerate the golden files after an intended change with LBBENCH_UPDATE_GOLDEN=1.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import shlex
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pandas as pd
import pytest
import yaml
from helpers.paths import REPO

from lbbench.cli import build_parser
from lbbench.config.parse import load_config
from lbbench.config.schema import Config
from lbbench.k8s import manifests as m
from lbbench.k8s.merge import read_events
from lbbench.k8s.render import K8S_VERSION, Rendered, RenderOptions, render, write

ROOT = REPO
GOLDEN = ROOT / "tests" / "golden" / "k8s" / "quickstart"
SHIPPED = sorted(ROOT.glob("configs/*.toml"))

KINDS = """
[cluster]
name = "kinds"
nodes = 2
namespaces = ["default", "db"]

[[deployments]]
name = "web"
replicas = 3
[deployments.template]
service = "lognormal:8ms,0.5"
slots = 2
burn_cpu = true
[deployments.template.faults]
error_rate = 0.01
[deployments.template.readiness]
period = "2s"
initialDelay = "1s"

[[statefulsets]]
name = "db"
namespace = "db"
replicas = 2
labels = { app = "db", tier = "data" }

[[daemonsets]]
name = "edge"
[daemonsets.template]
service = "const:1ms"

[[services]]
name = "web"
selector = { app = "web" }
type = "NodePort"
port = 80
targetPort = 8080

[[services]]
name = "db"
namespace = "db"
selector = { app = "db" }
type = "LoadBalancer"

[[services]]
name = "edge"
selector = { app = "edge" }

[[ingresses]]
name = "web"
ingressClassName = "haproxy"
[[ingresses.rules]]
host = "web.example.com"
path = "/api"
service = "web"
[[ingresses.rules]]
host = "*"
path = "/"
service = "edge"

[load]
service = "web"
via = "NodePort"
rate = [100, 200]
path = "/?status=503:1"
connections = "keepalive:12"
[[load.steps]]
at = "4s"
rate = 300
ramp = true

[proxy]
maxconn = 2
balance = "least-conn"

[[events]]
at = "1s"
action = "kill_pod"
target = "deployment/web"

[[events]]
at = "2s"
action = "delete_pod"
target = "pod/db-1"

[[events]]
at = "3s"
action = "scale"
target = "deployment/web"
replicas = 5

[[events]]
at = "4s"
action = "rolling_update"
target = "deployment/web"
template = { service = "exp:5ms" }

[[events]]
at = "5s"
action = "slow_pod"
target = "deployment/web"
index = 0

[[events]]
at = "6s"
action = "node_down"
target = "node/node-1"

[run]
duration = "8s"
frontends = ["userspace-dnat", "l7-proxy", "haproxy"]
repeat = 2
"""

CLOSED = """
[cluster]
name = "closed"

[[deployments]]
name = "api"
replicas = 2

[[services]]
name = "api"
selector = { app = "api" }
type = "LoadBalancer"

[[ingresses]]
name = "api"
ingressClassName = "nginx"
[[ingresses.rules]]
service = "api"

[load]
service = "api"
via = "LoadBalancer"
closed_loop_users = 200
think_time = "10ms"

[run]
duration = "5s"
frontends = ["kernel-nftables", "nginx"]
"""

TIMELINE = """
[cluster]
name = "timeline"

[[deployments]]
name = "web"
replicas = 2

[[services]]
name = "web"
selector = { app = "web" }

[load]
service = "web"
rate = 10

[[events]]
at = "300ms"
action = "kill_pod"
target = "deployment/web"
index = 1

[[events]]
at = "600ms"
action = "scale"
target = "deployment/web"
replicas = 3

[run]
duration = "1s"
frontends = ["userspace-dnat"]
"""


def _config(tmp_path: Path, name: str, text: str) -> Config:
    path = tmp_path / f"{name}.toml"
    path.write_text(text)
    return load_config(path)


def documents(rendered: Rendered) -> list[tuple[str, dict[str, Any]]]:
    return [(name, doc) for name, text in rendered.files.items() if name.endswith(".yaml")
            for doc in yaml.safe_load_all(text) if doc]


def validate_all(rendered: Rendered) -> int:
    docs = documents(rendered)
    for name, doc in docs:
        try:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as e:
            path = ".".join(str(p) for p in e.path)
            pytest.fail(f"{name}: {doc['kind']}/{doc['metadata']['name']} invalid at {path}: {e.message}")
    return len(docs)


def _kinds(rendered: Rendered) -> list[str]:
    return [doc["kind"] for _, doc in documents(rendered)]


# -- every config validates -------------------------------------------------------------------------------
@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_every_shipped_config_renders_valid_manifests(path: Path) -> None:
    rendered = render(load_config(path), RenderOptions(ingress_url="http://ingress.example.svc.cluster.local"))
    assert validate_all(rendered) >= 4
    assert {"Namespace", "Service", "Job"} <= set(_kinds(rendered))
    assert rendered.phases


@pytest.mark.parametrize("name,text", [("kinds", KINDS), ("closed", CLOSED), ("timeline", TIMELINE)])
def test_every_kind_and_option_validates(tmp_path: Path, name: str, text: str) -> None:
    config = _config(tmp_path, name, text)
    for opts in (RenderOptions(), RenderOptions(parallelism=1, ingress_url="http://ing.x.svc.cluster.local",
                                                lb_address="203.0.113.7", with_proxy=True)):
        validate_all(render(config, opts))


def test_validation_can_fail() -> None:
    """The check above would notice a wrong manifest: strict mode rejects unknown or mistyped fields."""
    rendered = render(load_config(ROOT / "configs" / "quickstart.toml"), RenderOptions())
    deployment = next(doc for _, doc in documents(rendered) if doc["kind"] == "Deployment")
    typo = copy.deepcopy(deployment)
    typo["spec"]["replica"] = typo["spec"].pop("replicas")
    wrong_type = copy.deepcopy(deployment)
    wrong_type["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["periodSeconds"] = 0.1
    for bad in (typo, wrong_type):
        with pytest.raises(kubernetes_validate.ValidationError):
            kubernetes_validate.validate(bad, K8S_VERSION, strict=True)


# -- golden files ---------------------------------------------------------------------------------------
def test_quickstart_matches_golden_files(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(ROOT)  # the files name the config by the path given
    rendered = render(load_config("configs/quickstart.toml"), RenderOptions(image="lbbench:golden"))
    if os.environ.get("LBBENCH_UPDATE_GOLDEN"):
        for stale in GOLDEN.glob("*"):
            stale.unlink()
        write(rendered, GOLDEN)
    assert sorted(p.name for p in GOLDEN.iterdir()) == sorted([*rendered.files, "config.toml"])
    for name, text in rendered.files.items():
        assert (GOLDEN / name).read_text() == text, f"{name} differs from tests/golden/k8s/quickstart/{name}"


# -- what the containers run ----------------------------------------------------------------------------
def _unknown_flags(argv: list[str]) -> set[str]:
    parser, _ = build_parser()
    _, unknown = parser.parse_known_args(argv)
    return {a for a in unknown if a.startswith("--")}


def _load_argv(script: str) -> tuple[list[str], list[str]]:
    """The `lbbench load ...` and `lbbench k8s pack ...` argv of a Job pod's script, with its env filled in."""
    env = {"$JOB_COMPLETION_INDEX": "1", "$LBBENCH_START_AT": "1700000000", "$LBBENCH_REPEAT": "0",
           "${NODE_IP}": "10.0.0.5"}
    for k, v in env.items():
        script = script.replace(k, v)
    load_line, pack_line = script.replace("\\\n", " ").strip().splitlines()
    load = shlex.split(load_line.split(" >&2 ||")[0])
    pack = shlex.split(pack_line)
    assert load[0] == "lbbench" and pack[:2] == ["exec", "lbbench"]
    return load[1:], pack[2:]


def test_rendered_commands_parse_with_lbbench_cli(tmp_path: Path) -> None:
    for text in (KINDS, CLOSED, (ROOT / "configs" / "quickstart.toml").read_text()):
        rendered = render(_config(tmp_path, "c", text), RenderOptions(with_proxy=True))
        for _, doc in documents(rendered):
            if doc["kind"] == "Job":
                container = doc["spec"]["template"]["spec"]["containers"][0]
                assert container["command"][:2] == ["sh", "-c"]
                load, pack = _load_argv(container["command"][2])
                assert load[0] == "load" and _unknown_flags(load) == set()
                assert _unknown_flags(pack) == set()
            elif doc["kind"] in ("Deployment", "StatefulSet", "DaemonSet"):
                args = doc["spec"]["template"]["spec"]["containers"][0]["args"]
                assert args[0] == "serve" and _unknown_flags(args) == set()


# -- what each kind becomes ----------------------------------------------------------------------------------
def test_kinds_render_as_their_kubernetes_objects(tmp_path: Path) -> None:
    config = _config(tmp_path, "kinds", KINDS)
    rendered = render(config, RenderOptions(ingress_url="http://haproxy.ing.svc.cluster.local", parallelism=4))
    docs = [doc for _, doc in documents(rendered)]
    by = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    assert {d["metadata"]["name"] for d in docs if d["kind"] == "Namespace"} == {"lbbench-kinds", "lbbench-kinds-db"}
    sts = by[("StatefulSet", "db")]
    assert sts["metadata"]["namespace"] == "lbbench-kinds-db"
    assert ("Service", sts["spec"]["serviceName"]) in by  # its governing headless Service exists
    assert by[("Service", sts["spec"]["serviceName"])]["spec"]["clusterIP"] == "None"
    assert "replicas" not in by[("DaemonSet", "edge")]["spec"]
    web = by[("Deployment", "web")]["spec"]["template"]["spec"]["containers"][0]
    assert web["readinessProbe"]["periodSeconds"] == 2 and web["readinessProbe"]["initialDelaySeconds"] == 1
    assert web["args"][web["args"].index("--service") + 1] == "lognormal:8ms,0.5"
    assert "--burn-cpu" in web["args"] and web["resources"]["requests"]["cpu"] == "2"
    assert by[("Service", "web")]["spec"]["ports"][0]["nodePort"] == config.service("default/web").node_port
    assert by[("Service", "db")]["spec"]["type"] == "LoadBalancer"
    ing = by[("Ingress", "web")]
    assert ing["spec"]["ingressClassName"] == "haproxy"
    assert ing["metadata"]["annotations"]["haproxy-ingress.github.io/maxconn-server"] == "2"
    assert ing["metadata"]["annotations"]["haproxy.org/load-balance"] == "leastconn"
    assert [r.get("host") for r in ing["spec"]["rules"]] == ["web.example.com", None]
    jobs = [d for d in docs if d["kind"] == "Job"]
    assert [j["metadata"]["name"] for j in jobs] == [
        "lbbench-load-kube-proxy-0", "lbbench-load-kube-proxy-1", "lbbench-load-l7-proxy-0",
        "lbbench-load-l7-proxy-1", "lbbench-load-ingress-haproxy-0", "lbbench-load-ingress-haproxy-1"]
    assert all(j["spec"]["completionMode"] == "Indexed" and j["spec"]["parallelism"] == 4 for j in jobs)
    script = jobs[0]["spec"]["template"]["spec"]["containers"][0]["command"][2]
    load, _ = _load_argv(script)
    assert load[1] == f"http://10.0.0.5:{config.service('default/web').node_port}/?status=503:1"
    assert load[load.index("--part") + 1] == "1/4" and load[load.index("--step") + 1] == "4s:300:ramp"
    assert load[load.index("--connections") + 1] == "keepalive:12"
    notes = "\n".join(rendered.notes)
    assert "slow_pod deployment/web at 5 s: skipped" in notes and "node_down" in notes
    assert "DaemonSets run one pod per real node" in notes


def test_keepalive_pool_smaller_than_the_parts_is_refused(tmp_path: Path) -> None:
    config = _config(tmp_path, "kinds", KINDS)
    with pytest.raises(ValueError, match="keepalive:12 is fewer connections than 13 parts"):
        render(config, RenderOptions(parallelism=13))


def test_ingress_nginx_and_lb_options(tmp_path: Path) -> None:
    config = _config(tmp_path, "closed", CLOSED)
    rendered = render(config, RenderOptions(lb_address="203.0.113.7", ingress_url="http://nginx.ing"))
    docs = {(d["kind"], d["metadata"]["name"]): d for _, d in documents(rendered)}
    ann = docs[("Ingress", "api")]["metadata"]["annotations"]
    assert ann["nginx.ingress.kubernetes.io/load-balance"] == "round_robin"
    assert not any("haproxy" in k for k in ann)
    load, _ = _load_argv(docs[("Job", "lbbench-load-kube-proxy-0")]["spec"]["template"]["spec"]["containers"][0]
                         ["command"][2])
    assert load[1] == "http://203.0.113.7:8080/" and load[load.index("--closed-loop") + 1] == "200"
    assert ("Job", "lbbench-load-ingress-nginx-0") in docs
    assert any("no per-pod connection limit" in n for n in rendered.notes)


# -- the scripts -------------------------------------------------------------------------------------------------
def test_scripts_are_valid_sh(tmp_path: Path) -> None:
    for text in (KINDS, CLOSED, TIMELINE):
        rendered = render(_config(tmp_path, "c", text), RenderOptions())
        for name in ("run.sh", "faults.sh"):
            script = tmp_path / name
            script.write_text(rendered.files[name])
            subprocess.run(["sh", "-n", str(script)], check=True, timeout=10)


FAKE_KUBECTL = """#!/bin/sh
echo "$(python3 -c 'import time; print(time.time())') $*" >> "$KUBECTL_LOG"
case "$*" in *"get pods"*) printf 'pod/web-aaa\\npod/web-bbb\\n' ;; esac
"""


def test_faults_script_fires_at_the_offsets(tmp_path: Path) -> None:
    """faults.sh against a stand-in kubectl (it records its arguments): right commands, right times, and
    events.csv rows that `lbbench merge` reads."""
    rendered = render(_config(tmp_path, "timeline", TIMELINE), RenderOptions())
    paths = write(rendered, tmp_path / "out")
    faults = next(p for p in paths if p.name == "faults.sh")
    assert faults.stat().st_mode & stat.S_IXUSR
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "kubectl").write_text(FAKE_KUBECTL)
    (bin_dir / "kubectl").chmod(0o755)
    log = tmp_path / "kubectl.log"
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "KUBECTL_LOG": str(log)}
    start = time.time() + 0.3
    out = subprocess.run(["sh", str(faults), f"{start:.6f}", "kube-proxy", "10", "0"], env=env,
                         capture_output=True, text=True, timeout=30, check=True)
    calls = [line.split(" ", 1) for line in log.read_text().splitlines()]
    acts = [(float(t) - start, cmd) for t, cmd in calls if "get pods" not in cmd]
    assert [cmd for _, cmd in acts] == [
        "-n lbbench-timeline delete pod/web-bbb --grace-period=0 --force --wait=false",
        "-n lbbench-timeline scale deployment/web --replicas=3"]
    assert acts[0][0] >= 0.3 and acts[1][0] >= 0.6  # never early (late only by the machine's load)
    events_csv = tmp_path / "events.csv"
    events_csv.write_text(out.stdout)
    events = read_events([events_csv])
    assert events[["kind", "target", "detail", "frontend"]].values.tolist() == [
        ["event", "deployment/web", "kill_pod", "kube-proxy"], ["event", "deployment/web", "scale", "kube-proxy"]]
    assert events["at_s"].between(0.3, 5.0).all() and pd.api.types.is_float_dtype(events["at_s"])


NODE_DOWN = TIMELINE.replace('name = "timeline"', 'name = "timeline"\nnodes = 2').split("[[events]]")[0] + """
[[events]]
at = "200ms"
action = "node_down"
target = "node/node-1"

[run]
duration = "600ms"
frontends = ["userspace-dnat"]
"""

NODE_KUBECTL = """#!/bin/sh
echo "$(python3 -c 'import time; print(time.time())') $*" >> "$KUBECTL_LOG"
case "$*" in *"get pods -A"*) printf 'node-b node-a node-b' ;; esac
"""


def _fake_kubectl(tmp_path: Path, script: str) -> tuple[dict[str, str], Path]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "kubectl").write_text(script)
    (bin_dir / "kubectl").chmod(0o755)
    log = tmp_path / "kubectl.log"
    return {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "KUBECTL_LOG": str(log)}, log


def test_node_down_cordons_and_drains_the_experiments_node_then_uncordons(tmp_path: Path) -> None:
    rendered = render(_config(tmp_path, "nodes", NODE_DOWN), RenderOptions())
    faults = next(p for p in write(rendered, tmp_path / "out") if p.name == "faults.sh")
    env, log = _fake_kubectl(tmp_path, NODE_KUBECTL)
    start = time.time() + 0.2
    out = subprocess.run(["sh", str(faults), f"{start:.6f}", "kube-proxy", "10"], env=env, capture_output=True,
                         text=True, timeout=30, check=True)
    calls = [line.split(" ", 1) for line in log.read_text().splitlines()]
    acts = [(float(t) - start, cmd) for t, cmd in calls if "get pods" not in cmd]
    selector = "--pod-selector=lbbench.dev/experiment=timeline,lbbench.dev/role=pod"
    assert [cmd for _, cmd in acts] == [  # node-1 is the second node, by name, running the experiment's pods
        "cordon node-b", f"drain node-b {selector} --ignore-daemonsets --delete-emptydir-data --timeout=120s",
        "uncordon node-b"]
    assert acts[0][0] >= 0.2 and acts[2][0] >= 0.6  # down at its time, up again when the phase ends
    assert out.stdout.splitlines()[1].split(",")[1:4] == ["event", "node/node-1", "node_down"]
    assert "cordon + drain" in rendered.files["NOTES.md"] and "slow_pod, fail_pod" in rendered.files["NOTES.md"]


RUN_KUBECTL = """#!/bin/sh
echo "$*" >> "$KUBECTL_LOG"
case "$*" in
  *"rollout status deployment/lbbench-l7-proxy"*) exit 1 ;;
  *"get pods -l app=lbbench-l7-proxy"*) echo "lbbench-l7-proxy-5d9f   0/1   CrashLoopBackOff   4" ;;
  *"logs -l app=lbbench-l7-proxy"*"--previous"*) echo "[pod/lbbench-l7-proxy-5d9f/proxy] previous run" ;;
  *"logs -l app=lbbench-l7-proxy"*) echo "[pod/p/proxy] lbbench serve: error: unrecognized arguments: --bogus" ;;
esac
"""


def test_run_script_stops_at_a_deployment_that_is_not_ready_and_says_why(tmp_path: Path) -> None:
    rendered = render(load_config(ROOT / "configs" / "quickstart.toml"), RenderOptions())
    run = next(p for p in write(rendered, tmp_path / "out") if p.name == "run.sh")
    env, log = _fake_kubectl(tmp_path, RUN_KUBECTL)
    proc = subprocess.run(["sh", str(run), str(tmp_path / "parts")], env={**env, "LBBENCH_READY_S": "1"},
                          capture_output=True, text=True, timeout=30, cwd=tmp_path)
    assert proc.returncode == 1
    err = proc.stderr
    assert "deployment/lbbench-l7-proxy in namespace lbbench-quickstart is not ready after 1 s" in err
    assert "CrashLoopBackOff" in err and "unrecognized arguments: --bogus" in err and "previous run" in err
    assert "deployment/lbbench-l7-proxy did not become ready" in err and "nothing was measured" in err
    assert "stopped (exit status 1) while waiting for deployment/lbbench-l7-proxy" in err
    assert "rollout status deployment/web" in log.read_text() and "50-" not in log.read_text()  # no Job started


JOB_KUBECTL = """#!/bin/sh
echo "$*" >> "$KUBECTL_LOG"
case "$*" in
  *"{.status.succeeded}"*) echo 1 ;;
  *"{.status.failed}"*) echo 1 ;;
  *"status.phase=Failed"*) echo "pod/lbbench-load-kube-proxy-0-1-x7k" ;;
  *"logs pod/lbbench-load-kube-proxy-0-1-x7k --prefix"*) echo "[pod/x/load] lbbench load: cannot resolve" ;;
esac
"""


def test_run_script_shows_a_failed_load_part_and_goes_on(tmp_path: Path) -> None:
    """A part that fails ends the wait at once (backoffLimit 0 fails the Job), with its last log lines."""
    rendered = render(_config(tmp_path, "timeline", TIMELINE), RenderOptions())
    run = next(p for p in write(rendered, tmp_path / "out") if p.name == "run.sh")
    env, log = _fake_kubectl(tmp_path, JOB_KUBECTL)
    proc = subprocess.run(["sh", str(run), str(tmp_path / "parts")], env={**env, "LBBENCH_LEAD_S": "0"},
                          capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "job lbbench-load-kube-proxy-0: 1 of 3 part(s) failed" in proc.stderr
    assert "lbbench load: cannot resolve" in proc.stderr and "is incomplete" in proc.stderr
    assert log.read_text().count("{.status.failed}") == 1  # no waiting for the Job's timeout
    assert "delete job lbbench-load-kube-proxy-0" in log.read_text()


@pytest.mark.slow
def test_cli_render_and_its_errors(tmp_path: Path) -> None:
    def lbbench(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "lbbench", *args], capture_output=True, text=True, timeout=60,
                              cwd=ROOT)

    ok = lbbench("k8s", "render", "configs/quickstart.toml", "-o", str(tmp_path / "out"), "--image", "reg/lb:1")
    assert ok.returncode == 0, ok.stderr
    assert (tmp_path / "out" / "config.toml").read_text() == (ROOT / "configs" / "quickstart.toml").read_text()
    assert "image: reg/lb:1" in (tmp_path / "out" / "10-workloads.yaml").read_text()
    for args, message in ((("nope.toml",), "no such file"), (("configs/quickstart.toml", "-p", "0"), "parallelism"),
                          (("configs/quickstart.toml", "--namespace", "Bad_NS"), "DNS-1123")):
        bad = lbbench("k8s", "render", *args, "-o", str(tmp_path / "bad"))
        assert bad.returncode == 2 and message in bad.stderr and "Traceback" not in bad.stderr
        assert len(bad.stderr.strip().splitlines()) == 1
    bad = lbbench("k8s", "pack", str(tmp_path / "nope"))
    assert bad.returncode == 2 and "not a folder" in bad.stderr


def test_namespace_map_keeps_everything_out_of_default(tmp_path: Path) -> None:
    config = _config(tmp_path, "kinds", KINDS)
    assert m.Context(config, "i", {}).labels("pod")[m.ROLE] == "pod"
    rendered = render(config, RenderOptions(namespace="bench"))
    spaces = {d["metadata"].get("namespace") for _, d in documents(rendered) if d["kind"] != "Namespace"}
    assert spaces == {"bench", "bench-db"}


def test_parts_too_big_for_kubectl_logs_are_flagged(tmp_path: Path) -> None:
    config = _config(tmp_path, "timeline", TIMELINE.replace("rate = 10", "rate = 2000").replace('"1s"', '"600s"'))
    assert any("--parallelism 8 or more" in n for n in render(config, RenderOptions(parallelism=3)).notes)
    assert not any("MiB of log" in n for n in render(config, RenderOptions(parallelism=8)).notes)


def test_graceful_termination_renders_a_prestop_hook_and_the_grace_period() -> None:
    config = load_config(ROOT / "configs" / "graceful-shutdown.toml")
    w = config.workloads[0]
    tpl = dataclasses.replace(w.template, termination_grace_period_s=45.0)
    config = dataclasses.replace(config, workloads=(dataclasses.replace(w, template=tpl),))
    rendered = render(config, RenderOptions())
    validate_all(rendered)
    (deploy,) = [doc for _, doc in documents(rendered) if doc["kind"] == "Deployment" and
                 doc["metadata"]["name"] == "web"]
    spec = deploy["spec"]["template"]["spec"]
    assert spec["terminationGracePeriodSeconds"] == 45
    assert spec["containers"][0]["lifecycle"] == {"preStop": {"exec": {"command": ["sleep", "12"]}}}


def test_a_via_sweep_renders_its_first_path_and_says_so() -> None:
    config = load_config(Path("configs/nodeport-loadbalancer.toml"))
    assert config.load.vias == ("ClusterIP", "NodePort", "LoadBalancer")
    rendered = render(config, RenderOptions())
    docs = {(d["kind"], d["metadata"]["name"]): d for _, d in documents(rendered)}
    load, _ = _load_argv(docs[("Job", "lbbench-load-kube-proxy-0")]["spec"]["template"]["spec"]["containers"][0]
                         ["command"][2])
    assert load[1] == "http://web.lbbench-nodeport-lb.svc.cluster.local:8080/"  # ClusterIP: the Service's name
    assert any("load.via sweeps ClusterIP, NodePort, LoadBalancer: the kube-proxy Job measures the first, ClusterIP"
               in n for n in rendered.notes)
