"""The Kubernetes path runs as rendered: every container of every shipped config's manifests (Deployments,
StatefulSets, DaemonSets, the l7-proxy, the load Jobs, and the pods faults.sh rolls out) is started here with
loopback substitutes (tests/helpers/k8s_local.py) until its readiness probe answers, or, for a Job, until it has run
a short load and printed its part. An argument the program does not have makes the process exit 2 with
"unrecognized arguments", and that fails the test: there is no allowlist of flags.
"""

from __future__ import annotations

import copy
import re
import shlex
import signal
from pathlib import Path
from typing import Any

import pytest
from helpers.dns_thread import DnsThread
from helpers.k8s_local import WORKLOADS, ContainerFailed, LocalCluster, Manifests, container, rolled_templates
from helpers.paths import REPO
from test_k8s import KINDS

from lbbench.cli import build_parser
from lbbench.config.parse import load_config
from lbbench.k8s.render import RenderOptions, render
from lbbench.system.procs import Supervisor

ROOT = REPO
SHIPPED = sorted(ROOT.glob("configs/*.toml"))
INGRESS_URL = "http://ingress.lbbench-local.svc.cluster.local"
JOB_ENV = {"JOB_COMPLETION_INDEX": "1", "LBBENCH_START_AT": "1700000000", "LBBENCH_REPEAT": "0", "NODE_IP": "10.0.0.5"}


def _manifests(path: Path) -> Manifests:
    return Manifests.of(render(load_config(path), RenderOptions(ingress_url=INGRESS_URL)).files)


def unknown_flags(argv: list[str]) -> set[str]:
    parser, _ = build_parser()
    _, unknown = parser.parse_known_args(argv)
    return {a for a in unknown if a.startswith("-")}


def commands(manifests: Manifests) -> list[tuple[str, list[str]]]:
    """(where, lbbench argv) of every container and rolled-out template, Job scripts split into their commands."""
    out = []
    for _, obj in manifests.objects(*WORKLOADS):
        out.append((f"{obj['kind']}/{obj['metadata']['name']}", container(obj)["args"]))
    for workload, args, _ in rolled_templates(manifests.faults):
        out.append((f"faults.sh rolling update of {workload}", args))
    for _, job in manifests.objects("Job"):
        script = container(job)["command"][2].replace("\\\n", " ")
        script = re.sub(r"\$\{?(\w+)\}?", lambda m: JOB_ENV[m.group(1)], script)
        for line in script.splitlines():
            words = shlex.split(line.split(">&2")[0])
            words = words[1:] if words[0] == "exec" else words
            assert words[0] == "lbbench", f"Job/{job['metadata']['name']} runs {words[0]!r}"
            out.append((f"Job/{job['metadata']['name']}", words[1:]))
    return out


@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_every_rendered_command_parses(path: Path) -> None:
    """The quick check: every argv parses with lbbench's own parser, nothing unknown (and no allowlist)."""
    found = commands(_manifests(path))
    assert any(where.startswith("Job/") for where, _ in found)
    for where, argv in found:
        assert unknown_flags(argv) == set(), f"{path.name}: {where}: {argv}"


def _start_all(manifests: Manifests, supervisor: Supervisor, tmp_path: Path) -> None:
    with DnsThread() as dns:
        cluster = LocalCluster(supervisor, dns, tmp_path)
        try:
            cluster.start_all(manifests, INGRESS_URL if any(manifests.objects("Ingress")) else None)
        finally:
            cluster.stop()
    expected = {f"{o['kind']}/{o['metadata']['name']}" for _, o in manifests.objects(*WORKLOADS, "Job")}
    assert set(cluster.started) == expected


@pytest.mark.slow
@pytest.mark.timeout(900)  # a few dozen processes started one after another on a shared machine
@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_every_rendered_container_starts_locally(path: Path, supervisor: Supervisor, tmp_path: Path) -> None:
    _start_all(_manifests(path), supervisor, tmp_path)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_statefulsets_daemonsets_nodeports_and_an_ingress_start_locally(supervisor: Supervisor,
                                                                       tmp_path: Path) -> None:
    """test_k8s.py's config of every kind (its load asks for 503s: here it asks for 200s)."""
    path = tmp_path / "kinds.toml"
    path.write_text(KINDS.replace('path = "/?status=503:1"', 'path = "/"'))
    _start_all(_manifests(path), supervisor, tmp_path / "run")


def _with_flag(manifests: Manifests, kind: str, name: str, flag: str) -> Manifests:
    files = copy.deepcopy(manifests.files)
    for _, docs in files:
        for d in docs:
            if d["kind"] == kind and d["metadata"]["name"] == name:
                c: dict[str, Any] = container(d)
                if "args" in c:
                    c["args"].append(flag)
                else:
                    c["command"][2] = c["command"][2].replace("lbbench load ", f"lbbench load {flag} ", 1)
    return Manifests(files, manifests.faults)


@pytest.mark.timeout(600)
def test_a_flag_the_program_lacks_fails_both_checks(supervisor: Supervisor, tmp_path: Path) -> None:
    """The checks above can fail: one made-up flag in the l7-proxy Deployment, or in a load Job; a pod that
    dies after it was ready."""
    manifests = _manifests(ROOT / "configs" / "quickstart.toml")
    job = next(o["metadata"]["name"] for _, o in manifests.objects("Job"))
    broken_proxy = _with_flag(manifests, "Deployment", "lbbench-l7-proxy", "--no-such-flag")
    broken_job = _with_flag(manifests, "Job", job, "--no-such-flag")
    for broken in (broken_proxy, broken_job):
        assert any(unknown_flags(argv) == {"--no-such-flag"} for _, argv in commands(broken))
    with DnsThread() as dns:
        cluster = LocalCluster(supervisor, dns, tmp_path / "proxy")
        with pytest.raises(ContainerFailed, match=r"Deployment/lbbench-l7-proxy .* exited with 2: .*"
                                                  r"unrecognized arguments: --no-such-flag"):
            cluster.start_all(broken_proxy)
        jobs = [o for _, o in broken_job.objects("Job") if o["metadata"]["name"] == job]
        with pytest.raises(ContainerFailed, match=rf"Job/{job}: .*unrecognized arguments: --no-such-flag"):
            cluster.run_jobs(jobs)
        cluster.check_alive()  # the web pods started before the broken proxy are still serving
        cluster.pods[0].child.signal(signal.SIGKILL)
        cluster.pods[0].child.popen.wait(10)
        with pytest.raises(ContainerFailed, match="exited with -9 after it was ready"):
            cluster.check_alive()
        cluster.stop()
