"""`lbbench k8s render CONFIG -o DIR`: the experiment as manifests, a failure timeline and a runner script.

    rendered = render(load_config(path), RenderOptions(image="registry/lbbench:0.1.0"))
    write(rendered, Path("k8s-out"))

Which front ends become what on a real cluster: the DNAT front ends (userspace-dnat, kernel-*,
haproxy-tcp) are the cluster's own kube-proxy, reached through the load's Service (`load.via`);
`l7-proxy` is lbbench's proxy as a Deployment + Service; haproxy/nginx/httpd stand for the
cluster's Ingress controller, reached at `--ingress-url`. Each (front end, rate) is one Indexed
Job whose P pods each send every P-th request of the one seeded schedule.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from lbbench import __version__
from lbbench.config.schema import Config, ServiceConfig
from lbbench.k8s import manifests as m
from lbbench.k8s.scripts import CLUSTER_FAULTS, fault_steps, faults_script, run_script
from lbbench.load.generator import RPS_PER_WORKER, USERS_PER_WORKER

K8S_VERSION = "1.30.0"  # the Kubernetes OpenAPI schemas the manifests are validated against (tests)
DNAT = ("userspace-dnat", "kernel-nftables", "kernel-iptables", "ebpf-socketlb", "haproxy-tcp")
INGRESS_PROXIES = ("haproxy", "nginx", "httpd")
CONTROLLERS = ("auto", "ingress-nginx", "haproxy-ingress", "haproxytech", "none")
LOG_BYTES_PER_REQUEST = 52  # a packed part, measured: parquet rows, gzip, base64
LOG_LIMIT_BYTES = 8 * 2**20  # under the kubelet's default containerLogMaxSize (10 MiB), with room
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


@dataclass(frozen=True)
class RenderOptions:
    image: str = f"lbbench:{__version__}"
    namespace: str | None = None  # the cluster namespace of the config's "default"; None: lbbench-<cluster name>
    parallelism: int = 3  # generator parts (pods of each load Job)
    ingress_class: str | None = None  # None: the config's ingressClassName
    ingress_controller: str = "auto"  # whose annotations to add (auto: from the class name)
    ingress_url: str | None = None  # where the Ingress controller is reached from inside the cluster
    lb_address: str | None = None  # the LoadBalancer Service's external address (via = LoadBalancer)
    with_proxy: bool | None = None  # lbbench's l7-proxy Deployment; None: when l7-proxy is a front end


@dataclass(frozen=True)
class Rendered:
    config: Config
    files: dict[str, str]  # file name -> text, in `kubectl apply` order
    phases: tuple[m.LoadPhase, ...]
    notes: tuple[str, ...]  # what differs from `lbbench run`, and what the user must supply


def _check_label(value: str, what: str) -> str:
    if not _DNS_LABEL.match(value):
        raise ValueError(f"{what} {value!r} is not a DNS-1123 label (lowercase letters, digits, '-', <= 63)")
    return value


def namespace_map(config: Config, default: str | None) -> dict[str, str]:
    """Every config namespace gets its own cluster namespace, so nothing lands in the user's `default`."""
    base = _check_label(default or f"lbbench-{config.cluster.name}", "namespace")
    names = {"default", *config.cluster.namespaces}
    return {n: base if n == "default" else _check_label(f"{base}-{n}", "namespace") for n in sorted(names)}


def workers_per_part(config: Config, rate_rps: float, parts: int) -> int:
    lc = config.load
    if lc.workers:
        return lc.workers
    if lc.closed_loop_users:
        return max(1, math.ceil(lc.closed_loop_users / parts / USERS_PER_WORKER))
    peak = max([rate_rps, *(s.rate_rps for s in lc.steps)])
    return max(1, math.ceil(peak / parts / RPS_PER_WORKER[lc.connections.kind]))


def _service_url(svc: ServiceConfig, ns: str, path: str, via: str, lb_address: str | None) -> str:
    if via == "NodePort":
        return f"http://${{NODE_IP}}:{svc.node_port}{path}"  # each part through its own node's kube-proxy
    if via == "LoadBalancer" and lb_address:
        return f"http://{lb_address}:{svc.port}{path}"
    return f"http://{svc.name}.{ns}.svc.cluster.local:{svc.port}{path}"


def targets(config: Config, ctx: m.Context, opts: RenderOptions, ingress_class: str,
            notes: list[str]) -> list[tuple[str, str]]:
    """(front-end label, URL) of each load Job, in the config's front-end order."""
    lc = config.load
    svc = config.service(lc.service)
    if opts.ingress_url is not None and not opts.ingress_url.startswith("http://"):
        raise ValueError(f"--ingress-url must be an http:// URL, got {opts.ingress_url!r}")
    out: dict[str, str] = {}
    for fe in config.run.frontends:
        if fe in DNAT:
            out.setdefault("kube-proxy", _service_url(svc, ctx.ns(svc.namespace), lc.path, lc.via, opts.lb_address))
        elif fe == "l7-proxy" and _with_proxy(config, opts):
            out.setdefault("l7-proxy", f"http://{m.PROXY_NAME}.{ctx.ns(svc.namespace)}.svc.cluster.local:"
                                       f"{m.PROXY_PORT}{lc.path}")
        elif fe in INGRESS_PROXIES and opts.ingress_url and config.ingresses:
            out.setdefault(f"ingress-{ingress_class}", opts.ingress_url.rstrip("/") + lc.path)
    if any(fe in INGRESS_PROXIES for fe in config.run.frontends) and not opts.ingress_url:
        notes.append("haproxy/nginx/httpd stand for your cluster's Ingress controller: pass --ingress-url "
                     "(its in-cluster address, e.g. http://ingress-nginx-controller.ingress-nginx.svc.cluster.local) "
                     "to get a load Job for it")
    if len(lc.vias) > 1 and "kube-proxy" in out:
        notes.append(f"load.via sweeps {', '.join(lc.vias)}: the kube-proxy Job measures the first, {lc.via}; "
                     "render once per path (a config with that single path) to measure the others")
    if lc.via == "LoadBalancer" and not opts.lb_address and "kube-proxy" in out:
        notes.append("load.via = LoadBalancer: without --lb-address the Job uses the Service's cluster DNS name; "
                     "kube-proxy short-circuits in-cluster traffic to an LB IP anyway, so measure the cloud LB "
                     "from outside if it is what you want to see")
    if not out:
        notes.append("no front end of run.frontends maps to a target here: measuring kube-proxy")
        out["kube-proxy"] = _service_url(svc, ctx.ns(svc.namespace), lc.path, lc.via, opts.lb_address)
    for label in out:
        _check_label(f"lbbench-load-{label}-0", "load Job name")
    return list(out.items())


def _with_proxy(config: Config, opts: RenderOptions) -> bool:
    return opts.with_proxy if opts.with_proxy is not None else "l7-proxy" in config.run.frontends


def _controllers(opts: RenderOptions, ingress_class: str) -> tuple[str, ...]:
    if opts.ingress_controller not in CONTROLLERS:
        raise ValueError(f"ingress controller must be one of {', '.join(CONTROLLERS)}, got {opts.ingress_controller!r}")
    if opts.ingress_controller == "none":
        return ()
    if opts.ingress_controller != "auto":
        return (opts.ingress_controller,)
    if ingress_class == "nginx":
        return ("ingress-nginx",)
    if "haproxy" in ingress_class:  # both HAProxy controllers use the class "haproxy"; each ignores the other's keys
        return ("haproxy-ingress", "haproxytech")
    return ()


def phases(config: Config, ctx: m.Context, opts: RenderOptions, ingress_class: str,
           notes: list[str]) -> list[m.LoadPhase]:
    from lbbench.run.phase import phase_rates

    svc = config.service(config.load.service)
    out = []
    for label, url in targets(config, ctx, opts, ingress_class, notes):
        for k, rate in enumerate(phase_rates(config)):
            workers = workers_per_part(config, rate, opts.parallelism)
            pool = config.load.connections.pool
            if config.load.connections.kind == "keepalive" and pool < opts.parallelism * workers:
                raise ValueError(f"keepalive:{pool} is fewer connections than {opts.parallelism} parts x {workers} "
                                 "workers: each worker needs one (lower --parallelism or raise the pool)")
            out.append(m.LoadPhase(label, rate, f"lbbench-load-{label}-{k}", ctx.ns(svc.namespace), url,
                                   opts.parallelism, workers))
    _log_size_note(config, out, opts.parallelism, notes)
    return out


def _log_size_note(config: Config, load: list[m.LoadPhase], parallelism: int, notes: list[str]) -> None:
    """Each part travels through `kubectl logs`, which only keeps the kubelet's current log file."""
    if not load or config.load.closed_loop_users:
        return
    rate = max(p.rate_rps for p in load)
    per_part = rate * config.run.duration_s / parallelism
    if per_part * LOG_BYTES_PER_REQUEST > LOG_LIMIT_BYTES:
        need = math.ceil(rate * config.run.duration_s * LOG_BYTES_PER_REQUEST / LOG_LIMIT_BYTES)
        notes.append(f"~{per_part:,.0f} requests per part is ~{per_part * LOG_BYTES_PER_REQUEST / 2**20:.0f} MiB of "
                     f"log, over the kubelet's default 10 MiB per container log: use --parallelism {need} or more")


def _headless(config: Config, ctx: m.Context) -> tuple[list[m.Obj], dict[str, str]]:
    """Headless Services: one per Service (the l7-proxy's discovery), plus a governing one per StatefulSet."""
    objs = [m.headless_service(ctx, m.headless_name(s.name), s.namespace, s.selector, s.target_port)
            for s in config.services]
    governing: dict[str, str] = {}
    for w in config.workloads:
        if w.kind != "StatefulSet":
            continue
        svc = next((s for s in config.services if w in config.backing_workloads(s)), None)
        if svc is not None:
            governing[w.key] = m.headless_name(svc.name)
        else:
            governing[w.key] = m.headless_name(w.name)
            objs.append(m.headless_service(ctx, governing[w.key], w.namespace, w.labels, w.template.port))
    return objs, governing


def _check_unique(objs: list[m.Obj]) -> None:
    seen: set[tuple[str, str, str]] = set()
    for o in objs:
        key = (o["kind"], o["metadata"].get("namespace", ""), o["metadata"]["name"])
        if key in seen:
            raise ValueError(f"two {key[0]} objects named {key[2]!r} in namespace {key[1]!r} (a headless Service "
                             f"<service>-pods collides with a Service of the config); rename one")
        seen.add(key)


class _Dumper(yaml.SafeDumper):
    """Plain YAML for humans: no &anchors for shared dicts, scripts as literal blocks."""

    def ignore_aliases(self, data: object) -> bool:
        return True


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|" if "\n" in value else None)


_Dumper.add_representer(str, _str)


def _yaml(config: Config, objs: list[m.Obj]) -> str:
    head = (f"# Rendered by `lbbench k8s render` from {config.path}; "
            f"validated against the Kubernetes {K8S_VERSION} schemas.\n")
    return head + "---\n".join(yaml.dump(o, Dumper=_Dumper, sort_keys=False, width=120) for o in objs)


def render(config: Config, opts: RenderOptions) -> Rendered:
    if opts.parallelism < 1:
        raise ValueError(f"--parallelism must be >= 1, got {opts.parallelism}")
    notes: list[str] = []
    ctx = m.Context(config, opts.image, namespace_map(config, opts.namespace))
    ingress_class = opts.ingress_class or (config.ingresses[0].ingress_class if config.ingresses else "lbbench")
    controllers = _controllers(opts, ingress_class)
    headless, governing = _headless(config, ctx)
    files: dict[str, str] = {}
    files["00-namespaces.yaml"] = _yaml(config, [m.namespace(ctx, n) for n in sorted(set(ctx.namespaces.values()))])
    files["10-workloads.yaml"] = _yaml(config, [m.workload(ctx, w, governing.get(w.key)) for w in config.workloads])
    services = [m.service(ctx, s) for s in config.services] + headless
    with_proxy = _with_proxy(config, opts)
    proxy = m.proxy_objects(ctx) if with_proxy else []
    _check_unique(services + proxy)
    files["20-services.yaml"] = _yaml(config, services)
    if config.ingresses:
        files["30-ingress.yaml"] = _yaml(config, [m.ingress(ctx, i, ingress_class, controllers)
                                                  for i in config.ingresses])
    if proxy:
        files["40-l7-proxy.yaml"] = _yaml(config, proxy)
    base_files = list(files)
    load = phases(config, ctx, opts, ingress_class, notes)
    job_files = []
    for p in load:
        name = f"50-{p.job.removeprefix('lbbench-')}.yaml"
        files[name] = _yaml(config, [m.load_job(ctx, p)])
        job_files.append((p, name))
    files["faults.sh"] = faults_script(ctx)
    files["run.sh"] = run_script(ctx, job_files, base_files, with_proxy)
    notes += _notes(config, ctx, ingress_class, controllers)
    files["NOTES.md"] = notes_text(config, ctx, load, notes)
    return Rendered(config, files, tuple(load), tuple(notes))


def _notes(config: Config, ctx: m.Context, ingress_class: str, controllers: tuple[str, ...]) -> list[str]:
    notes = [n for w in config.workloads for n in m.probe_notes(w)]
    if config.ingresses and ingress_class == "lbbench":
        notes.append("ingressClassName 'lbbench' has no controller on a real cluster: the Ingress object is inert "
                     "and lbbench's l7-proxy stands in; use --ingress-class/--ingress-url for your controller")
    if config.ingresses and "ingress-nginx" in controllers and config.proxy.maxconn:
        notes.append(f"ingress-nginx has no per-pod connection limit or request queue: proxy.maxconn = "
                     f"{config.proxy.maxconn} and queue_timeout have no equivalent there")
    if "haproxytech" in controllers and config.proxy.maxconn:
        notes.append("haproxy.org/pod-maxconn is divided among the controller's replicas: run one replica "
                     "to keep maxconn per pod as configured")
    if any(w.kind == "DaemonSet" for w in config.workloads):
        notes.append(f"DaemonSets run one pod per real node; the rate is sized for {config.cluster.nodes} node(s) "
                     "(cluster.nodes): set load.rate for your node count")
    if any(s.cluster_ip for s in config.services):
        notes.append("clusterIP values of the config are loopback addresses: left for the cluster to allocate")
    notes += [f"event {s.action} {s.target} at {s.at_s:g} s: " + ("skipped, " if not s.lines else "") + s.note
              for s in fault_steps(ctx) if s.note]
    return notes


_PROXY_NOTE = """## How the l7-proxy finds its pods

`lbbench serve proxy --backend-dns NAME:PORT --resolve-every 1` asks the cluster DNS for the A records of the
headless Service `NAME` (one per ready pod) every second and applies a changed answer as an Endpoints update, as
lbbench's controller does locally: new pods start taking requests, removed ones drain (requests in flight finish).
DNS is the dependency-free baseline; it lags by the DNS TTL and any cache in between (CoreDNS `cache`,
NodeLocal DNSCache), and it cannot tell a terminating pod from a gone one. A watch of the Service's EndpointSlices
(the API server's `ready`/`serving`/`terminating` conditions, pushed at once) would be better on both counts, at
the price of a Kubernetes client, a ServiceAccount and RBAC to read EndpointSlices.

"""


def notes_text(config: Config, ctx: m.Context, load: list[m.LoadPhase], notes: list[str]) -> str:
    ns = "\n".join(f"| `{k}` | `{v}` |" for k, v in ctx.namespaces.items())
    jobs = "\n".join(f"| `{p.job}` | {p.frontend} | {p.rate_rps:g} | {p.parallelism} | {p.workers} | `{p.url}` |"
                     for p in load)
    faults = "\n".join(f"| {s.at_s:g} s | {s.action} | {s.target} | {'yes' if s.lines else 'no'} |"
                       for s in fault_steps(ctx)) or "| - | - | - | - |"
    warn = "\n".join(f"- {n}" for n in notes) or "- none"
    proxy = _PROXY_NOTE if any(p.frontend == "l7-proxy" for p in load) else ""
    return f"""# {config.name} on a real cluster

Rendered by `lbbench k8s render` from `{config.path}` with image `{ctx.image}`.
Run everything with `sh run.sh PARTS_DIR`, then `lbbench merge PARTS_DIR/*.log --events PARTS_DIR/events-*.csv
--config config.toml --out results/k8s-{config.name}` and `lbbench report results/k8s-{config.name}`.

## Namespaces

| config | cluster |
| --- | --- |
{ns}

## Load Jobs (one per front end and rate; each pod sends every P-th request of the seeded schedule)

| Job | front end | rate (rps) | parts | workers/part | URL |
| --- | --- | --- | --- | --- | --- |
{jobs}

## Failure timeline (faults.sh)

| at | action | target | on a cluster |
| --- | --- | --- | --- |
{faults}

## Differences from `lbbench run`

{warn}

## The failure timeline on a cluster: what it can and cannot do

{CLUSTER_FAULTS}

{proxy}## The image

Every container runs `{ctx.image}` (`--image`; default `lbbench:VERSION`). Build it from the repository's
Dockerfile and make it reachable from the cluster's nodes, either through a registry:

    docker build -t lbbench:{__version__} .
    docker tag lbbench:{__version__} REGISTRY/lbbench:{__version__}
    docker push REGISTRY/lbbench:{__version__}
    lbbench k8s render CONFIG -o DIR --image REGISTRY/lbbench:{__version__}

or, for a kind cluster, straight into its nodes: `kind load docker-image lbbench:{__version__}`.
"""


def write(rendered: Rendered, out: Path) -> list[Path]:
    """Write every file (scripts executable) plus config.toml, the config as given; returns the paths."""
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, text in rendered.files.items():
        path = out / name
        path.write_text(text)
        if name.endswith(".sh"):
            path.chmod(0o755)
        paths.append(path)
    config_copy = out / "config.toml"
    config_copy.write_text(Path(rendered.config.path).read_text())
    paths.append(config_copy)
    return paths
