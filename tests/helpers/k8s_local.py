"""Start what `lbbench k8s render` wrote, locally: every container's command and arguments as rendered,
with loopback substitutes for what a cluster provides.

What a cluster gives a container, and the stand-in here:
  a pod IP, every interface (`--listen 0.0.0.0:P --allow-remote`)  a fresh loopback IP (`--listen IP:P`)
  the cluster DNS (Service and headless names)                      lbbench's ClusterDns on a thread
  a Service's ClusterIP and nodePort (kube-proxy)                   `lbbench serve dnat` on a loopback VIP
  the pod's resolver (/etc/resolv.conf)                             `--dns` (proxy) / `--dns` (load)
  `$(POD_NAME)`, status.hostIP, the clock ConfigMap, the Job index  the env values a kubelet would set
  the image's `lbbench` entrypoint                                  this interpreter, via PATH
`--allow-remote` is dropped (loopback runs never use it) and a load Job's load is made short (1 s, a
few requests per second): the flags stay, their values shrink. Nothing else is changed, so an unknown
flag or a bad value makes the process exit, and that fails the check with its stderr.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from helpers.dns_thread import DnsThread
from lbbench.cluster.standalone import fresh_ip, wait_port
from lbbench.k8s.parts import read_parts
from lbbench.model.addresses import HostPort
from lbbench.system.procs import Child, Supervisor, lbbench_argv

Obj = dict[str, Any]
READY_TIMEOUT_S = 60.0  # the machine is shared; a probe is a behaviour, this only bounds a hang
JOB_TIMEOUT_S = 180.0
LOAD_RATE_CAP_RPS = 30.0
LOCAL_REPLICAS = 2  # pods per workload started here (the Endpoints have more than one pod)


class ContainerFailed(AssertionError):
    """A rendered container exited early, never became ready, or its Job printed no part."""


@dataclass(frozen=True)
class Manifests:
    """The rendered files as a cluster reads them: YAML documents in apply order, and faults.sh."""

    files: list[tuple[str, list[Obj]]]
    faults: str

    @classmethod
    def of(cls, files: dict[str, str]) -> Manifests:
        docs = [(name, [d for d in yaml.safe_load_all(text) if d]) for name, text in files.items()
                if name.endswith(".yaml")]
        return cls(docs, files["faults.sh"])

    def objects(self, *kinds: str) -> Iterator[tuple[str, Obj]]:
        for name, docs in self.files:
            for d in docs:
                if d["kind"] in kinds:
                    yield name, d


WORKLOADS = ("Deployment", "StatefulSet", "DaemonSet")


def container(obj: Obj) -> Obj:
    containers = obj["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1, f"{obj['kind']}/{obj['metadata']['name']}: one container expected"
    c: Obj = containers[0]
    return c


def rolled_templates(faults: str) -> list[tuple[str, list[str], Obj | None]]:
    """(workload, args, readinessProbe) of every rolling update faults.sh patches in (`kubectl patch -p`)."""
    out = []
    for line in faults.splitlines():
        words = shlex.split(line) if line.startswith("kubectl") and " patch " in line else []
        if not words:
            continue
        ops = {op["path"].removeprefix("/spec/template/spec/containers/0/"): op["value"]
               for op in json.loads(words[words.index("-p") + 1])}
        if "args" in ops:
            at = words.index("patch")
            out.append((f"{words[at + 1]}/{words[at + 2]}", ops["args"], ops.get("readinessProbe")))
    return out


# -- what a kubelet would do --------------------------------------------------------------------------------
def _expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' `$(VAR)` references in command and args."""
    return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m.group(1), m.group(0)), text)


def _env(c: Obj, values: dict[str, str]) -> dict[str, str]:
    """The container's env, each `valueFrom` filled in from `values` (keyed by fieldPath or ConfigMap key)."""
    out = {}
    for e in c.get("env", []):
        source = e.get("valueFrom", {})
        ref = source.get("fieldRef", {}).get("fieldPath") or source.get("configMapKeyRef", {}).get("key")
        out[e["name"]] = str(e["value"]) if "value" in e else values[ref]
    return out


def localize(args: list[str], ip: str, dns: HostPort) -> list[str]:
    """A serve command's args with its pod IP for every interface, loopback only, and lbbench's DNS."""
    out: list[str] = []
    for a in args:
        if a == "--allow-remote":
            continue
        if out and out[-1] in ("--listen", "--stats"):
            a = f"{ip}:{a.rpartition(':')[2]}"
        out.append(a)
    if out[:2] == ["serve", "proxy"] and "--backend-dns" in out:
        out += ["--dns", str(dns)]
    return out


def shorten_load(script: str, dns: HostPort) -> str:
    """A load Job's script with a short load through lbbench's DNS; every flag kept."""
    duration_s = float(re.search(r"--duration (\S+?)s\b", script).group(1))  # type: ignore[union-attr]

    def step(m: re.Match[str]) -> str:
        at_s = float(m.group(1)) / duration_s
        return f"--step {at_s:.3f}s:{min(float(m.group(2)), LOAD_RATE_CAP_RPS):g}{m.group(3) or ''}"

    script = script.replace(" --allow-remote", "").replace("lbbench load ", f"lbbench load --dns {dns} ", 1)
    script = re.sub(r"--duration \S+", "--duration 1s", script)
    script = re.sub(r"--rate (\S+)", lambda m: f"--rate {min(float(m.group(1)), LOAD_RATE_CAP_RPS):g}", script)
    script = re.sub(r"--step (\S+?)s:([0-9.e+]+)(:ramp)?", step, script)
    script = re.sub(r"--closed-loop (\d+)", lambda m: f"--closed-loop {min(int(m.group(1)), 6)}", script)
    return re.sub(r"--workers \d+", "--workers 1", script)


# -- the local cluster -----------------------------------------------------------------------------------
@dataclass
class Pod:
    name: str
    ip: str
    labels: dict[str, str]
    ports: dict[str, int]  # container port by name
    child: Child


@dataclass
class LocalCluster:
    """One config's rendered containers, started in `kubectl apply` order under `supervisor`."""

    supervisor: Supervisor
    dns: DnsThread
    work: Path
    node_ip: str = field(default_factory=fresh_ip)
    pods: list[Pod] = field(default_factory=list)
    started: list[str] = field(default_factory=list)  # what ran: "kind/name" of each container

    def __post_init__(self) -> None:
        self.work.mkdir(parents=True, exist_ok=True)

    def bin_dir(self) -> Path:
        """A PATH entry whose `lbbench` is this interpreter's, as the image's entrypoint."""
        path = self.work / "bin"
        if not path.is_dir():
            path.mkdir(parents=True)
            (path / "lbbench").write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -m lbbench "$@"\n')
            (path / "lbbench").chmod(0o755)
        return path

    def start_all(self, manifests: Manifests, ingress_url: str | None = None) -> None:
        for _, docs in manifests.files:
            for obj in (d for d in docs if d["kind"] in WORKLOADS):
                self.start_workload(obj)
            for obj in (d for d in docs if d["kind"] == "Service"):
                self.start_service(obj)
        for workload, args, probe in rolled_templates(manifests.faults):
            obj = next(o for _, o in manifests.objects(*WORKLOADS)
                       if f"{o['kind'].lower()}/{o['metadata']['name']}" == workload)
            self.start_workload(obj, args=args, probe=probe, replicas=1, suffix="rolled")
        if ingress_url is not None:
            self.start_ingress(manifests, ingress_url)
        self.run_jobs([o for _, o in manifests.objects("Job")])
        self.check_alive()

    def stop(self) -> None:
        """Stop every process, reaped before the supervisor fixture's short grace (the machine may be busy)."""
        for child in reversed(self.supervisor.children):
            child.stop_sync(5.0)

    def check_alive(self) -> None:
        """A serving container that exits after it became ready is an early exit too."""
        for pod in self.pods:
            code = pod.child.poll()
            if code is not None:
                raise ContainerFailed(f"{pod.name} exited with {code} after it was ready: "
                                      f"{_tail(self.work / f'{pod.name}.stderr')}")

    # pods ------------------------------------------------------------------------------------------
    def start_workload(self, obj: Obj, *, args: list[str] | None = None, probe: Obj | None = None,
                       replicas: int | None = None, suffix: str = "") -> None:
        name, kind = obj["metadata"]["name"], obj["kind"]
        c = container(obj)
        n = replicas or min(LOCAL_REPLICAS, obj["spec"].get("replicas", 1))
        for i in range(n):
            pod_name = f"{name}-{i}" if kind == "StatefulSet" else f"{name}-{suffix or 'local'}{i}"
            self._start_pod(f"{kind}/{name}", pod_name, obj, c, args or c["args"], probe or c.get("readinessProbe"))

    def _start_pod(self, source: str, pod_name: str, obj: Obj, c: Obj, args: list[str], probe: Obj | None) -> None:
        ip = fresh_ip()
        env = _env(c, {"metadata.name": pod_name, "status.hostIP": self.node_ip, "status.podIP": ip})
        argv = [*c.get("command", ["lbbench"]), *(_expand(a, env) for a in args)]
        assert argv[0] == "lbbench", f"{source}: runs {argv[0]!r}, not the image's lbbench"
        stderr = self.work / f"{pod_name}.stderr"
        with stderr.open("wb") as err:
            child = self.supervisor.spawn(pod_name, lbbench_argv(*localize(argv[1:], ip, self.dns.addr)),
                                          stderr=err, env=env)
        ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
        pod = Pod(pod_name, ip, obj["spec"]["template"]["metadata"]["labels"], ports, child)
        self._wait_ready(source, pod, probe, stderr)
        self.pods.append(pod)
        self.started.append(source)

    def _wait_ready(self, source: str, pod: Pod, probe: Obj | None, stderr: Path) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not _probe_passes(pod, probe):
            code = pod.child.poll()
            if code is not None:
                raise ContainerFailed(f"{source} ({pod.name}) exited with {code}: {_tail(stderr)}")
            if time.monotonic() > deadline:
                raise ContainerFailed(f"{source} ({pod.name}) not ready in {READY_TIMEOUT_S:g} s: {_tail(stderr)}")
            time.sleep(0.05)

    # Services: kube-proxy's part ------------------------------------------------------------------------
    def start_service(self, obj: Obj) -> None:
        spec, meta = obj["spec"], obj["metadata"]
        pods = [p for p in self.pods if spec["selector"].items() <= p.labels.items()]
        dns_name = f"{meta['name']}.{meta['namespace']}.svc.cluster.local"
        port = spec["ports"][0]
        target = port["targetPort"]
        if spec.get("clusterIP") == "None":  # headless: every pod's IP under the name
            self.dns.set(dns_name, tuple(p.ip for p in pods))
            return
        backends = [f"{p.ip}:{p.ports[target] if isinstance(target, str) else target}" for p in pods]
        vip = fresh_ip()
        listens = [f"{vip}:{port['port']}"] + ([f"{self.node_ip}:{port['nodePort']}"] if "nodePort" in port else [])
        self._start_dnat(f"Service/{meta['name']}", listens, backends)
        self.dns.set(dns_name, (vip,))

    def start_ingress(self, manifests: Manifests, url: str) -> None:
        """The cluster's Ingress controller, at the URL given to `render --ingress-url`: to the first rule's pods."""
        host = url.removeprefix("http://").split("/")[0]
        ing = next(o for _, o in manifests.objects("Ingress"))
        backend = ing["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]["name"]
        svc = next(o for _, o in manifests.objects("Service") if o["metadata"]["name"] == backend)
        pods = [p for p in self.pods if svc["spec"]["selector"].items() <= p.labels.items()]
        target = svc["spec"]["ports"][0]["targetPort"]
        vip = fresh_ip()
        self._start_dnat("ingress controller", [f"{vip}:80"], [f"{p.ip}:{target}" for p in pods])
        self.dns.set(host, (vip,))

    def _start_dnat(self, what: str, listens: list[str], backends: list[str]) -> None:
        argv = lbbench_argv("serve", "dnat", *(a for x in listens for a in ("--listen", x)),
                            *(a for b in backends for a in ("--backend", b)))
        self.supervisor.spawn(f"kube-proxy for {what}", argv)
        for listen in listens:
            host, _, port = listen.rpartition(":")
            wait_port(HostPort(host, int(port)), READY_TIMEOUT_S)

    # Jobs -------------------------------------------------------------------------------------------
    def run_jobs(self, jobs: list[Obj], at_once: int = 4) -> None:
        for i in range(0, len(jobs), at_once):
            batch = [(job, self._start_job(job)) for job in jobs[i:i + at_once]]
            for job, (proc, out, err) in batch:
                self._check_job(job, proc, out, err)

    def _start_job(self, job: Obj) -> tuple[subprocess.Popen[bytes], Path, Path]:
        c = container(job)
        name = job["metadata"]["name"]
        start_at = f"{time.time() + 3:.3f}"  # the clock ConfigMap: t=0 a little ahead, as run.sh sets it
        env = {**os.environ, **_env(c, {"start_at": start_at, "repeat": "0", "status.hostIP": self.node_ip}),
               "JOB_COMPLETION_INDEX": "0", "PATH": f"{self.bin_dir()}{os.pathsep}{os.environ['PATH']}"}
        command = [*c["command"][:2], shorten_load(c["command"][2], self.dns.addr)]
        assert command[:2] == ["sh", "-c"], f"Job/{name}: command {command[:2]}"
        out, err = self.work / f"{name}.log", self.work / f"{name}.stderr"
        with out.open("wb") as o, err.open("wb") as e:
            proc = subprocess.Popen(command, stdout=o, stderr=e, stdin=subprocess.DEVNULL, env=env)
        return proc, out, err

    def _check_job(self, job: Obj, proc: subprocess.Popen[bytes], out: Path, err: Path) -> None:
        source = f"Job/{job['metadata']['name']}"
        try:
            code = proc.wait(JOB_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise ContainerFailed(f"{source}: not done in {JOB_TIMEOUT_S:g} s: {_tail(err)}") from None
        if code != 0 or "exit status" in err.read_text():
            raise ContainerFailed(f"{source}: exited with {code}: {_tail(err)}")
        summary = json.loads(read_parts(out)[0].files["summary.json"])
        if not summary["ok"]:
            raise ContainerFailed(f"{source}: its part has no successful request: {summary['statuses']}, "
                                  f"{summary['errors']}; {_tail(err)}")
        self.started.append(source)


def _probe_passes(pod: Pod, probe: Obj | None) -> bool:
    if probe is None:
        return True
    if "httpGet" in probe:
        get = probe["httpGet"]
        port = pod.ports[get["port"]] if isinstance(get["port"], str) else get["port"]
        try:
            with urllib.request.urlopen(f"http://{pod.ip}:{port}{get['path']}", timeout=1.0) as r:
                return bool(200 <= r.status < 400)
        except OSError:
            return False
    port_ref = probe["tcpSocket"]["port"]
    port = pod.ports[port_ref] if isinstance(port_ref, str) else port_ref
    try:
        with socket.create_connection((pod.ip, port), timeout=1.0):
            return True
    except OSError:
        return False


def _tail(path: Path, lines: int = 20) -> str:
    text = path.read_text(errors="replace").strip().splitlines() if path.exists() else []
    return " | ".join(text[-lines:]) or "(no stderr)"
