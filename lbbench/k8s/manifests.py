"""Kubernetes objects (plain dicts, as `kubectl apply` reads them) for one lbbench config.

Everything here is a pure function of the config and the render options; `render.py` decides
which objects go into which file. The objects are validated offline against the OpenAPI
schemas of a pinned Kubernetes version in tests/test_k8s.py.
"""

from __future__ import annotations

import math
import shlex
from dataclasses import dataclass
from typing import Any

from lbbench.config.schema import Config, IngressConfig, PodTemplate, Readiness, ServiceConfig, Workload
from lbbench.model.proxy import ProxySettings

Obj = dict[str, Any]

PROXY_NAME = "lbbench-l7-proxy"
PROXY_PORT = 8080
PROXY_STATS = "127.0.0.1:9901"  # loopback inside the pod: reach it with `kubectl port-forward`
CLOCK_CONFIGMAP = "lbbench-clock"  # start_at (unix s) and repeat of the phase being run
PART_DIR = "/tmp/lbbench-part"
PART_OF = "app.kubernetes.io/part-of"
EXPERIMENT = "lbbench.dev/experiment"
ROLE = "lbbench.dev/role"


@dataclass(frozen=True)
class Context:
    """What every object needs besides its own config entry."""

    config: Config
    image: str
    namespaces: dict[str, str]  # config namespace -> cluster namespace

    def ns(self, name: str) -> str:
        return self.namespaces[name]

    def labels(self, role: str) -> dict[str, str]:
        return {PART_OF: "lbbench", EXPERIMENT: self.config.cluster.name, ROLE: role}


@dataclass(frozen=True)
class LoadPhase:
    """One Indexed Job: every part of the seeded schedule of one front end at one rate."""

    frontend: str  # label in the merged results: kube-proxy, l7-proxy, ingress-<class>
    rate_rps: float
    job: str
    namespace: str
    url: str  # may contain ${NODE_IP} (NodePort: each part uses its own node)
    parallelism: int
    workers: int  # generator worker processes per part


def _meta(name: str, namespace: str | None, labels: dict[str, str], annotations: dict[str, str] | None = None) -> Obj:
    meta: Obj = {"name": name}
    if namespace is not None:
        meta["namespace"] = namespace
    meta["labels"] = labels
    if annotations:
        meta["annotations"] = annotations
    return meta


def namespace(ctx: Context, name: str) -> Obj:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": _meta(name, None, ctx.labels("namespace"))}


# -- the backend pods ------------------------------------------------------------------------------
def _seconds(value_s: float, lo: int) -> int:
    """Kubernetes probes count whole seconds: round up, never below `lo`."""
    return max(lo, math.ceil(value_s - 1e-9))


def readiness_probe(r: Readiness, port_name: str = "http") -> Obj:
    return {
        "httpGet": {"path": r.path, "port": port_name},
        "initialDelaySeconds": _seconds(r.initial_delay_s, 0),
        "periodSeconds": _seconds(r.period_s, 1),
        "timeoutSeconds": _seconds(r.timeout_s, 1),
        "failureThreshold": r.failure_threshold,
        "successThreshold": r.success_threshold,
    }


def probe_notes(w: Workload) -> list[str]:
    r = w.template.readiness
    rounded = [f"{name} {value:g} s -> {_seconds(value, lo)} s" for name, value, lo in
               (("period", r.period_s, 1), ("timeout", r.timeout_s, 1), ("initialDelay", r.initial_delay_s, 0))
               if _seconds(value, lo) != value]
    if not rounded:
        return []
    return [f"{w.kind} {w.name}: readiness probe rounded up to whole seconds (Kubernetes' unit): "
            + ", ".join(rounded) + "; unready pods leave Endpoints later than in `lbbench run`"]


def pod_args(t: PodTemplate, seed: int) -> list[str]:
    """`lbbench serve pod` in a container: listen on every interface, faults as flags."""
    f = t.faults
    args = ["serve", "pod", "--listen", f"0.0.0.0:{t.port}", "--allow-remote", "--name", "$(POD_NAME)",
            "--service", str(t.service), "--slots", str(t.slots), "--seed", str(seed), "--seed-from-name",
            "--no-control"]
    if t.burn_cpu:
        args.append("--burn-cpu")
    for flag, value, default in (("--error-rate", f.error_rate, 0.0), ("--slow-factor", f.slow_factor, 1.0),
                                 ("--hang-rate", f.hang_rate, 0.0), ("--close-rate", f.close_rate, 0.0)):
        if value != default:
            args += [flag, f"{value:g}"]
    if not f.ready:
        args.append("--unready")
    return args


def pod_container(ctx: Context, t: PodTemplate) -> Obj:
    # CPU requests only: a CPU limit would throttle the pod and add latency the model does not have
    cpu = f"{t.slots}" if t.burn_cpu else "100m"
    return {
        "name": "pod",
        "image": ctx.image,
        "imagePullPolicy": "IfNotPresent",
        "args": pod_args(t, ctx.config.run.seed),
        "env": [{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
        "ports": [{"name": "http", "containerPort": t.port, "protocol": "TCP"}],
        "readinessProbe": readiness_probe(t.readiness),
        "resources": {"requests": {"cpu": cpu, "memory": "64Mi"}, "limits": {"memory": "256Mi"}},
        **_pre_stop(t),
    }


def _pre_stop(t: PodTemplate) -> Obj:
    """The template's preStop delay as a sleeping preStop hook (whole seconds, Kubernetes' unit)."""
    if t.pre_stop_delay_s <= 0:
        return {}
    return {"lifecycle": {"preStop": {"exec": {"command": ["sleep", str(math.ceil(t.pre_stop_delay_s))]}}}}


def _grace(t: PodTemplate) -> Obj:
    default = PodTemplate().termination_grace_period_s
    if t.termination_grace_period_s == default:
        return {}
    return {"terminationGracePeriodSeconds": math.ceil(t.termination_grace_period_s)}


def workload(ctx: Context, w: Workload, governing_service: str | None) -> Obj:
    pod_labels = {**w.labels, **ctx.labels("pod")}
    spec: Obj = {
        "selector": {"matchLabels": dict(w.labels)},
        "template": {"metadata": {"labels": pod_labels},
                     "spec": {**_grace(w.template), "containers": [pod_container(ctx, w.template)]}},
    }
    if w.kind == "Deployment":  # surge 1, unavailable 0: how lbbench's controller rolls
        spec = {"replicas": w.replicas, "strategy": {"type": "RollingUpdate",
                                                     "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}, **spec}
    elif w.kind == "StatefulSet":
        # Parallel: all pods start at once, as lbbench's controller starts them
        spec = {"replicas": w.replicas, "serviceName": governing_service, "podManagementPolicy": "Parallel", **spec}
    api = "apps/v1"
    return {"apiVersion": api, "kind": w.kind, "metadata": _meta(w.name, ctx.ns(w.namespace), ctx.labels("workload")),
            "spec": spec}


# -- Services and Ingress ----------------------------------------------------------------------------
def headless_name(name: str) -> str:
    return f"{name}-pods"


def service(ctx: Context, s: ServiceConfig) -> Obj:
    port: Obj = {"name": "http", "port": s.port, "targetPort": s.target_port, "protocol": "TCP"}
    if s.type != "ClusterIP" and s.node_port is not None:
        port["nodePort"] = s.node_port
    meta = _meta(s.name, ctx.ns(s.namespace), ctx.labels("service"))
    return {"apiVersion": "v1", "kind": "Service", "metadata": meta,
            "spec": {"type": s.type, "selector": dict(s.selector), "ports": [port]}}


def headless_service(ctx: Context, name: str, namespace_: str, selector: dict[str, str], port: int) -> Obj:
    """Every ready pod's IP in DNS: the l7-proxy's endpoint discovery and a StatefulSet's governing Service."""
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": _meta(name, ctx.ns(namespace_), ctx.labels("headless")),
            "spec": {"clusterIP": "None", "selector": dict(selector),
                     "ports": [{"name": "http", "port": port, "targetPort": port, "protocol": "TCP"}]}}


def ingress_annotations(controller: str, p: ProxySettings) -> dict[str, str]:
    """The controller's closest knobs to the config's [proxy] section (only those it documents)."""
    out: dict[str, str] = {}
    if controller == "ingress-nginx":  # no per-pod connection limit and no queue in ingress-nginx
        if p.balance in ("round-robin", "peak-ewma"):
            out["nginx.ingress.kubernetes.io/load-balance"] = "ewma" if p.balance == "peak-ewma" else "round_robin"
        out["nginx.ingress.kubernetes.io/proxy-connect-timeout"] = str(_seconds(p.connect_timeout_s, 1))
        out["nginx.ingress.kubernetes.io/proxy-read-timeout"] = str(_seconds(p.server_timeout_s, 1))
        out["nginx.ingress.kubernetes.io/proxy-next-upstream-tries"] = str(p.retries + 1)
    haproxy_balance = {"round-robin": "roundrobin", "least-conn": "leastconn", "random": "random"}.get(p.balance)
    if controller == "haproxy-ingress":  # jcmoraisjr/haproxy-ingress
        if p.maxconn:
            out["haproxy-ingress.github.io/maxconn-server"] = str(p.maxconn)
        out["haproxy-ingress.github.io/timeout-queue"] = f"{max(1, round(p.queue_timeout_s * 1000))}ms"
        if haproxy_balance:
            out["haproxy-ingress.github.io/balance-algorithm"] = haproxy_balance
    if controller == "haproxytech":  # haproxytech/kubernetes-ingress; pod-maxconn is split across its replicas
        if p.maxconn:
            out["haproxy.org/pod-maxconn"] = str(p.maxconn)
        if haproxy_balance:
            out["haproxy.org/load-balance"] = haproxy_balance
    return out


def ingress(ctx: Context, ing: IngressConfig, ingress_class: str, controllers: tuple[str, ...]) -> Obj:
    by_host: dict[str, list[Obj]] = {}
    for r in ing.rules:
        svc = ctx.config.service(r.service)
        path = {"path": r.path, "pathType": "Prefix",
                "backend": {"service": {"name": svc.name, "port": {"number": svc.port}}}}
        by_host.setdefault(r.host, []).append(path)
    rules = []
    for host, paths in by_host.items():
        rule: Obj = {} if host == "*" else {"host": host}  # no host: every Host header
        rule["http"] = {"paths": paths}
        rules.append(rule)
    annotations: dict[str, str] = {}
    for c in controllers:
        annotations.update(ingress_annotations(c, ctx.config.proxy))
    return {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
            "metadata": _meta(ing.name, ctx.ns(ing.namespace), ctx.labels("ingress"), annotations),
            "spec": {"ingressClassName": ingress_class, "rules": rules}}


# -- lbbench's own L7 proxy -------------------------------------------------------------------------------
def proxy_args(p: ProxySettings, backend_dns: str, seed: int) -> list[str]:
    h = p.health
    return ["serve", "proxy", "--listen", f"0.0.0.0:{PROXY_PORT}", "--allow-remote", "--stats", PROXY_STATS,
            "--backend-dns", backend_dns, "--resolve-every", "1",
            "--maxconn", str(p.maxconn), "--max-queue", str(p.max_queue), "--queue-timeout", f"{p.queue_timeout_s:g}",
            "--balance", p.balance, "--retries", str(p.retries),
            "--retry-idempotent" if p.retry_idempotent else "--no-retry-idempotent",
            "--eject-after", str(p.eject_after), "--connect-timeout", f"{p.connect_timeout_s:g}",
            "--server-timeout", f"{p.server_timeout_s:g}", "--client-timeout", f"{p.client_timeout_s:g}",
            "--health-interval", f"{h.interval_s:g}", "--health-timeout", f"{h.timeout_s:g}",
            "--health-fall", str(h.fall), "--health-rise", str(h.rise), "--health-path", h.path,
            "--seed", str(seed), "--no-control"]


def proxy_objects(ctx: Context) -> list[Obj]:
    """A Deployment of one proxy in front of the load's Service's pods (found via its headless Service)."""
    svc = ctx.config.service(ctx.config.load.service)
    ns = ctx.ns(svc.namespace)
    backend = f"{headless_name(svc.name)}.{ns}.svc.cluster.local:{svc.target_port}"
    labels = {"app": PROXY_NAME, **ctx.labels("l7-proxy")}
    container = {
        "name": "proxy", "image": ctx.image, "imagePullPolicy": "IfNotPresent",
        "args": proxy_args(ctx.config.proxy, backend, ctx.config.run.seed),
        "ports": [{"name": "http", "containerPort": PROXY_PORT, "protocol": "TCP"}],
        "readinessProbe": {"tcpSocket": {"port": "http"}, "periodSeconds": 1},
        "resources": {"requests": {"cpu": "1", "memory": "128Mi"}, "limits": {"memory": "512Mi"}},
    }
    deployment = {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": _meta(PROXY_NAME, ns, ctx.labels("l7-proxy")),
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": PROXY_NAME}},
                 "template": {"metadata": {"labels": labels}, "spec": {"containers": [container]}}},
    }
    service_ = {"apiVersion": "v1", "kind": "Service", "metadata": _meta(PROXY_NAME, ns, ctx.labels("l7-proxy")),
                "spec": {"type": "ClusterIP", "selector": {"app": PROXY_NAME},
                         "ports": [{"name": "http", "port": PROXY_PORT, "targetPort": "http", "protocol": "TCP"}]}}
    return [deployment, service_]


# -- the load generator: an Indexed Job ------------------------------------------------------------------
def _duration(value_s: float) -> str:
    return f"{value_s:.9g}s"


def load_args(ctx: Context, phase: LoadPhase) -> list[str]:
    """`lbbench load` flags for one part (the URL and the part/clock flags are added by `part_script`)."""
    lc, run = ctx.config.load, ctx.config.run
    args = ["--duration", _duration(run.duration_s), "--arrivals", lc.arrivals, "--connections", str(lc.connections),
            "--workers", str(phase.workers), "--seed", str(run.seed), "--timeout", _duration(lc.timeout_s),
            "--connect-timeout", _duration(lc.connect_timeout_s)]
    if lc.closed_loop_users:
        args += ["--closed-loop", str(lc.closed_loop_users), "--think-time", _duration(lc.think_time_s)]
    else:
        args += ["--rate", f"{phase.rate_rps:.9g}"]
    for s in lc.steps:
        args += ["--step", f"{_duration(s.at_s)}:{s.rate_rps:.9g}" + (":ramp" if s.ramp else "")]
    if not lc.record_rows:
        args.append("--no-rows")
    return args


def part_script(ctx: Context, phase: LoadPhase) -> str:
    """The Job pod's shell command: run this pod's part, then print it to stdout as an armored block."""
    if any(c in phase.url for c in '"`\\') or "$" in phase.url.replace("${NODE_IP}", ""):
        raise ValueError(f"load URL {phase.url!r} must not contain quotes, backquotes, backslashes or '$'")
    flags = " ".join(shlex.quote(a) for a in load_args(ctx, phase))
    return (
        f'lbbench load "{phase.url}" \\\n  {flags} \\\n'
        f'  --part "$JOB_COMPLETION_INDEX/{phase.parallelism}" --allow-remote --start-at "$LBBENCH_START_AT" \\\n'
        f'  --out {PART_DIR} >&2 || echo "lbbench load: exit status $?" >&2\n'
        f'exec lbbench k8s pack {PART_DIR} --frontend {shlex.quote(phase.frontend)} --repeat "$LBBENCH_REPEAT"\n'
    )


def _clock_env(name: str, key: str) -> Obj:
    return {"name": name, "valueFrom": {"configMapKeyRef": {"name": CLOCK_CONFIGMAP, "key": key}}}


def _spread(weight: int, against: str) -> Obj:
    return {"weight": weight, "podAffinityTerm": {"topologyKey": "kubernetes.io/hostname",
                                                  "labelSelector": {"matchLabels": {ROLE: against}}}}


def load_job(ctx: Context, phase: LoadPhase) -> Obj:
    labels = {**ctx.labels("load"), "lbbench.dev/frontend": phase.frontend}
    container = {
        "name": "load", "image": ctx.image, "imagePullPolicy": "IfNotPresent",
        "command": ["sh", "-c", part_script(ctx, phase)],
        "env": [_clock_env("LBBENCH_START_AT", "start_at"), _clock_env("LBBENCH_REPEAT", "repeat"),
                {"name": "NODE_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.hostIP"}}}],
        "resources": {"requests": {"cpu": str(phase.workers), "memory": "256Mi"}, "limits": {"memory": "2Gi"}},
    }
    # parts on different nodes, and away from the pods they measure (CPU contention is latency)
    affinity = {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
        _spread(100, "load"), _spread(50, "pod")]}}
    return {
        "apiVersion": "batch/v1", "kind": "Job", "metadata": _meta(phase.job, phase.namespace, labels),
        "spec": {
            "completionMode": "Indexed", "completions": phase.parallelism, "parallelism": phase.parallelism,
            "backoffLimit": 0,  # a retried part would send its share at the wrong time: fail instead
            "template": {"metadata": {"labels": labels},
                         "spec": {"restartPolicy": "Never", "affinity": affinity, "containers": [container]}},
        },
    }
