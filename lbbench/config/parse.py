"""The config language: TOML in the Kubernetes vocabulary, validated into typed objects.

`load_config(path)` returns a :class:`Config` or raises ConfigError naming the file, the key
path and what was expected. Every key, default and unit is documented in configs/README.md.
"""

from __future__ import annotations

import ipaddress
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import cast

from lbbench.config.reader import Table
from lbbench.config.scale import parse_scale
from lbbench.config.schema import (
    ACTIONS,
    ClusterConfig,
    Config,
    Event,
    IngressConfig,
    LoadConfig,
    PodTemplate,
    Readiness,
    ReportConfig,
    RunConfig,
    ServiceConfig,
    Workload,
)
from lbbench.errors import ConfigError
from lbbench.model.addresses import LOOPBACK, is_loopback, parse_hostport
from lbbench.model.checks import parse_check
from lbbench.model.faults import Faults
from lbbench.model.load import ConnectionMode, RateStep
from lbbench.model.names import FRONTENDS
from lbbench.model.proxy import BALANCES, HealthCheck, ProxySettings
from lbbench.model.service import IngressRule, ServiceType
from lbbench.model.servicetime import ServiceTime


def load_config(path: str | Path, run: Mapping[str, object] | None = None) -> Config:
    """The config in `path`; `run` replaces keys of its [run] table (the command line's overrides),
    validated exactly as the file's own values (a ConfigError then names `run.<key>`)."""
    file = str(path)
    try:
        # UTF-8 always (not the locale's encoding); one leading byte order mark is accepted and
        # dropped: TOML 1.0 asks for "a valid UTF-8 encoded Unicode document", which a BOM does not
        # make invalid (toml-lang/toml#437), and Windows editors write one.
        raw = tomllib.loads(Path(path).read_bytes().decode("utf-8-sig"))
    except FileNotFoundError:
        raise ConfigError(file, "", "no such file") from None
    except IsADirectoryError:
        raise ConfigError(file, "", "is a directory, expected a TOML file") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(file, "", f"invalid TOML: {e}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(file, "", f"expected UTF-8 text (TOML is UTF-8); byte {e.start} is not") from None
    except OSError as e:
        raise ConfigError(file, "", f"cannot read: {e}") from None
    if run:
        table = raw.get("run", {})
        raw["run"] = {**table, **run} if isinstance(table, dict) else table
    return parse_config(file, raw)


def parse_config(file: str, raw: dict[str, object]) -> Config:
    top = Table(file, "", dict(raw))
    cluster = _cluster(top.table("cluster"))
    workloads = _workloads(top, cluster)
    services = _services(top, cluster)
    ingresses = tuple(_ingress(t, cluster) for t in top.tables("ingresses"))
    run = _run(top.table("run"))
    proxy = _proxy(top.table("proxy"))
    load = _load(top.table("load"), services)
    events = tuple(_event(t) for t in top.tables("events"))
    report = _report(top.table("report"), top.table("theory"), top)
    scale = parse_scale(top.table("scale"))
    top.done()
    config = Config(file, cluster, workloads, services, ingresses, load, events, run, proxy, report, scale)
    _cross_check(config, top)
    return config


def _name(t: Table, key: str = "name", default: object = None) -> str:
    value: str = t.text(key) if default is None else t.text(key, default)
    if not value or len(value) > 63 or not all(c.isalnum() or c == "-" for c in value) or \
            not value[0].isalnum() or value != value.lower():
        raise t.fail(key, f"expected a DNS-1123 label (lowercase letters, digits, '-'), got {value!r}")
    return value


def _loopback_net(t: Table, key: str, default: str) -> str:
    text: str = t.text(key, default)
    try:
        net = ipaddress.IPv4Network(text)
    except ValueError:
        raise t.fail(key, f"expected a network such as '127.96.0.0/16', got {text!r}") from None
    if not net.subnet_of(LOOPBACK):
        raise t.fail(key, f"must be inside 127.0.0.0/8 (lbbench is loopback only), got {text!r}")
    return text


def _loopback_ip(t: Table, key: str, default: object) -> str:
    value: str | None = t.text(key, default)
    if value is not None and not is_loopback(value):
        raise t.fail(key, f"must be an address in 127.0.0.0/8 (lbbench is loopback only), got {value!r}")
    return value  # type: ignore[return-value]


def _cluster(t: Table) -> ClusterConfig:
    d = ClusterConfig()
    c = ClusterConfig(
        name=_name(t, "name", d.name),
        nodes=t.integer("nodes", d.nodes, 1, 16),
        namespaces=t.str_list("namespaces", list(d.namespaces)),
        node_ip_base=t.integer("node_ip_base", d.node_ip_base, 1, 80),
        service_cidr=_loopback_net(t, "service_cidr", d.service_cidr),
        lb_cidr=_loopback_net(t, "lb_cidr", d.lb_cidr),
        ingress_ip=_loopback_ip(t, "ingress_ip", d.ingress_ip),
        ingress_port=t.integer("ingress_port", d.ingress_port, 1, 65535),
        dns=t.parsed("dns", lambda v: str(parse_hostport(v)), "a loopback IP:PORT", d.dns),
        socket_lb_reverse=t.flag("socket_lb_reverse", d.socket_lb_reverse),
    )
    t.done()
    return c


def _readiness(t: Table, d: Readiness) -> Readiness:
    r = Readiness(
        path=t.text("path", d.path),
        period_s=t.duration("period", d.period_s, lo=0.01, hi=60),
        timeout_s=t.duration("timeout", d.timeout_s, lo=0.01, hi=60),
        failure_threshold=t.integer("failureThreshold", d.failure_threshold, 1, 100),
        success_threshold=t.integer("successThreshold", d.success_threshold, 1, 100),
        initial_delay_s=t.duration("initialDelay", d.initial_delay_s, hi=600),
    )
    t.done()
    return r


def _faults(t: Table, d: Faults) -> Faults:
    f = Faults(
        error_rate=t.number("error_rate", d.error_rate, 0.0, 1.0),
        slow_factor=t.number("slow_factor", d.slow_factor, 0.0, 1000.0),
        hang_rate=t.number("hang_rate", d.hang_rate, 0.0, 1.0),
        close_rate=t.number("close_rate", d.close_rate, 0.0, 1.0),
        ready=t.flag("ready", d.ready),
    )
    t.done()
    return f


def parse_template(t: Table, base: PodTemplate | None = None) -> PodTemplate:
    """A pod template; keys not given keep `base`'s values (rolling updates overlay the old one)."""
    d = base or PodTemplate()
    tpl = PodTemplate(
        service=t.parsed("service", ServiceTime.parse, "const:, exp:, lognormal: or uniform: e.g. 'exp:10ms'",
                         str(d.service)),
        slots=t.integer("slots", d.slots, 1, 10_000),
        burn_cpu=t.flag("burn_cpu", d.burn_cpu),
        port=t.integer("port", d.port, 1, 65535),
        faults=_faults(t.table("faults"), d.faults),
        readiness=_readiness(t.table("readiness"), d.readiness),
        pre_stop_delay_s=t.duration("pre_stop_delay", d.pre_stop_delay_s, hi=3600),
        termination_grace_period_s=t.duration("termination_grace_period", d.termination_grace_period_s, hi=3600),
    )
    t.done()
    return tpl


def _workloads(top: Table, cluster: ClusterConfig) -> tuple[Workload, ...]:
    out: list[Workload] = []
    for key, kind in (("deployments", "Deployment"), ("statefulsets", "StatefulSet"), ("daemonsets", "DaemonSet")):
        for t in top.tables(key):
            name = _name(t)
            ns = _namespace(t, cluster)
            replicas = cluster.nodes if kind == "DaemonSet" else t.integer("replicas", 1, 0, 256)
            labels = t.str_map("labels", {"app": name})
            template = parse_template(t.table("template"))
            t.done()
            out.append(Workload(kind, name, ns, replicas, labels, template))  # type: ignore[arg-type]
    names = [(w.namespace, w.name) for w in out]
    for i, n in enumerate(names):
        if n in names[:i]:
            raise ConfigError(top.file, "", f"two workloads are named {n[1]!r} in namespace {n[0]!r}")
    return tuple(out)


def _namespace(t: Table, cluster: ClusterConfig) -> str:
    ns = t.text("namespace", "default")
    if ns not in cluster.namespaces:
        raise t.fail("namespace", f"expected one of the cluster's namespaces {list(cluster.namespaces)}, got {ns!r}")
    return str(ns)


def _services(top: Table, cluster: ClusterConfig) -> tuple[ServiceConfig, ...]:
    """The Services; a name may be used once per namespace (the API server refuses a second one)."""
    out: list[ServiceConfig] = []
    for t in top.tables("services"):
        svc = _service(t, cluster)
        first = next((i for i, s in enumerate(out) if s.key == svc.key), None)
        if first is not None:
            raise t.fail("name", f"a Service named {svc.name!r} already exists in namespace {svc.namespace!r} "
                                 f"(services[{first}]); names are unique per namespace")
        out.append(svc)
    return tuple(out)


def _service(t: Table, cluster: ClusterConfig) -> ServiceConfig:
    name = _name(t)
    ns = _namespace(t, cluster)
    stype = t.text("type", "ClusterIP", choices=("ClusterIP", "NodePort", "LoadBalancer"))
    port = t.integer("port", 8080, 1, 65535)
    node_port = t.integer("nodePort", None, 30000, 32767)
    if node_port is None and stype != "ClusterIP":
        node_port = 30000 + port % 2768
    svc = ServiceConfig(
        name=name, namespace=ns, selector=t.str_map("selector"), port=port,
        target_port=t.integer("targetPort", port, 1, 65535), type=stype, node_port=node_port,
        cluster_ip=_loopback_ip(t, "clusterIP", None),
    )
    t.done()
    return svc


def _ingress(t: Table, cluster: ClusterConfig) -> IngressConfig:
    name = _name(t)
    ns = _namespace(t, cluster)
    cls = t.text("ingressClassName", "lbbench")
    rules = []
    for r in t.tables("rules"):
        path = r.text("path", "/")
        if not path.startswith("/"):
            raise r.fail("path", f"expected a path prefix starting with '/', got {path!r}")
        rules.append(IngressRule(r.text("host", "*"), path, f"{ns}/{_name(r, 'service')}"))
        r.done()
    if not rules:
        raise t.fail("rules", "expected at least one [[ingresses.rules]] entry (host, path, service)")
    t.done()
    return IngressConfig(name, ns, cls, tuple(rules))


def _run(t: Table) -> RunConfig:
    d = RunConfig()
    frontends = t.str_list("frontends", list(d.frontends))
    for i, f in enumerate(frontends):
        if f not in FRONTENDS:
            raise ConfigError(t.file, f"{t.key_path('frontends')}[{i}]",
                              f"unknown front end {f!r}; expected one of {', '.join(FRONTENDS)}")
    r = RunConfig(
        duration_s=t.duration("duration", d.duration_s, lo=0.1, hi=3600),
        warmup_s=t.duration("warmup", d.warmup_s, hi=600),
        cooldown_s=t.duration("cooldown", d.cooldown_s, hi=600),
        seed=t.integer("seed", d.seed, 0, 2**63 - 1),
        frontends=frontends,
        endpoint_sync_delay_s=t.duration("endpoint_sync_delay", d.endpoint_sync_delay_s, hi=600),
        restart_delay_s=t.duration("restart_delay", d.restart_delay_s, hi=600),
        node_grace_period_s=t.duration("node_grace_period", d.node_grace_period_s, hi=600),
        terminating_fallback=t.flag("terminating_fallback", d.terminating_fallback),
        repeat=t.integer("repeat", d.repeat, 1, 100),
    )
    if not r.frontends:
        raise t.fail("frontends", "expected at least one front end")
    for i, f in enumerate(frontends):
        if f in frontends[:i]:
            raise ConfigError(t.file, f"{t.key_path('frontends')}[{i}]",
                              f"{f!r} is listed twice; each front end runs once (use run.repeat for more)")
    t.done()
    return r


def _proxy(t: Table) -> ProxySettings:
    d = ProxySettings()
    h = t.table("health")
    health = HealthCheck(
        interval_s=h.duration("interval", d.health.interval_s, lo=0.01, hi=600),
        timeout_s=h.duration("timeout", d.health.timeout_s, lo=0.01, hi=600),
        fall=h.integer("fall", d.health.fall, 1, 100), rise=h.integer("rise", d.health.rise, 1, 100),
        path=h.text("path", d.health.path),
    )
    h.done()
    p = ProxySettings(
        maxconn=t.integer("maxconn", d.maxconn, 0, 100_000),
        max_queue=t.integer("max_queue", d.max_queue, 0, 10_000_000),
        queue_timeout_s=t.duration("queue_timeout", d.queue_timeout_s, hi=3600),
        balance=t.text("balance", d.balance, choices=BALANCES),
        retries=t.integer("retries", d.retries, 0, 100),
        retry_idempotent=t.flag("retry_idempotent", d.retry_idempotent),
        eject_after=t.integer("eject_after", d.eject_after, 0, 1000),
        connect_timeout_s=t.duration("connect_timeout", d.connect_timeout_s, lo=0.001, hi=600),
        server_timeout_s=t.duration("server_timeout", d.server_timeout_s, lo=0.001, hi=3600),
        client_timeout_s=t.duration("client_timeout", d.client_timeout_s, lo=0.001, hi=3600),
        health=health,
        workers=t.integer("workers", d.workers, 1, 64),
    )
    t.done()
    return p


def _numbers(t: Table, key: str, lo: float, hi: float) -> tuple[float, ...]:
    values = t.num_list(key) if isinstance(t.data.get(key), list) else (t.number(key),)
    for v in values:
        if not lo < v <= hi:
            raise t.fail(key, f"each value must be in ({lo}, {hi}], got {v!r}")
    return values


def _load(t: Table, services: tuple[ServiceConfig, ...]) -> LoadConfig:
    d = LoadConfig(service="")
    default_svc = services[0].key if services else None
    svc_name = t.text("service", default_svc.split("/")[1] if default_svc else _MISSING_SERVICE(t))
    ns = t.text("namespace", "default")
    steps = []
    for s in t.tables("steps"):
        steps.append(RateStep(s.duration("at"), s.number("rate", lo=0.0, hi=1e6), s.flag("ramp", False)))
        s.done()
    rates = _numbers(t, "rate", 0.0, 1e6) if t.has("rate") else ()
    utils = _numbers(t, "utilisation", 0.0, 5.0) if t.has("utilisation") else d.utilisations
    if t.has("rate") and t.has("utilisation"):
        raise t.fail("utilisation", "give either rate or utilisation, not both")
    vias = _access_paths(t)
    lc = LoadConfig(
        service=f"{ns}/{svc_name}",
        via=vias[0],
        vias=vias,
        path=_request_path(t, "path", d.path),
        rates_rps=rates,
        utilisations=() if rates else utils,
        arrivals=t.text("arrivals", d.arrivals, choices=("poisson", "constant")),
        connections=t.parsed("connections", _connections, "'close' or 'keepalive:K'", "close"),
        steps=tuple(steps),
        workers=t.integer("workers", d.workers, 0, 64),
        closed_loop_users=t.integer("closed_loop_users", d.closed_loop_users, 0, 100_000),
        think_time_s=t.duration("think_time", d.think_time_s, hi=600),
        timeout_s=t.duration("timeout", d.timeout_s, lo=0.001, hi=3600),
        connect_timeout_s=t.duration("connect_timeout", d.connect_timeout_s, lo=0.001, hi=600),
        record_rows=t.flag("record_rows", d.record_rows),
    )
    t.done()
    return lc


def _access_paths(t: Table) -> tuple[ServiceType, ...]:
    """`via`: one access path, or a list of them (a sweep: each path is its own phase)."""
    paths = t.str_list("via", LoadConfig.vias)
    choices = ("ClusterIP", "NodePort", "LoadBalancer")
    bad = [p for p in paths if p not in choices]
    if not paths or bad or len(set(paths)) != len(paths):
        got = f"{bad[0]!r}" if bad else repr(list(paths))
        raise t.fail("via", f"expected one of {', '.join(choices)} or a list of distinct ones; got {got}")
    return cast(tuple[ServiceType, ...], paths)


def _request_path(t: Table, key: str, default: str) -> str:
    """The path of the load's requests: origin-form; the Service is the target, never a URL."""
    path: str = t.text(key, default)
    if not path.startswith("/") or any(c.isspace() or not c.isprintable() for c in path):
        raise t.fail(key, f"expected a request path such as '/api?x=1' (starting with '/', no spaces); the "
                          f"load goes to the Service on loopback, so a URL cannot be given here; got {path!r}")
    return path


def _report(report: Table, theory: Table, top: Table) -> ReportConfig:
    slo = report.duration("slo", None, lo=1e-6, hi=3600) if report.has("slo") else None
    tolerance = theory.number("tolerance", None, lo=0.0, hi=10.0) if theory.has("tolerance") else None
    checks = []
    for c in top.tables("checks"):
        checks.append(c.parsed("check", parse_check, "a check such as 'l7-proxy.p99 < 200ms'"))
        c.text("why", "")
        c.done()
    report.done()
    theory.done()
    return ReportConfig(slo, tolerance, tuple(checks))


def _MISSING_SERVICE(t: Table) -> str:
    raise t.fail("service", "is required (no [[services]] defined to default to)")


def _connections(value: object) -> ConnectionMode:
    if not isinstance(value, str):
        raise ValueError("not a string")
    return ConnectionMode.parse(value)


def _event(t: Table) -> Event:
    action = t.text("action", choices=ACTIONS)
    target = t.text("target")
    kind, _, name = target.partition("/")
    if kind not in ("deployment", "statefulset", "daemonset", "pod", "node", "service") or not name:
        raise t.fail("target", f"expected deployment/NAME, statefulset/NAME, daemonset/NAME, pod/NAME, "
                               f"node/NAME or service/NAME, got {target!r}")
    if action in ("node_down", "partition") and kind != "node":
        raise t.fail("target", f"{action} takes node/NAME, got {target!r}")
    if kind == "service" and action != "packet_loss":
        raise t.fail("target", f"service/NAME is a target of packet_loss only, got {action} {target!r}")
    if action == "pod_unreachable" and kind == "node":
        raise t.fail("target", f"pod_unreachable takes a pod or a workload's pod, got {target!r}")
    if action == "scale" and kind not in ("deployment", "statefulset"):
        raise t.fail("target", f"scale takes deployment/NAME or statefulset/NAME, got {target!r}")
    replicas = t.integer("replicas", None, 0, 256)
    if action == "scale" and replicas is None:
        raise t.fail("replicas", "is required for action 'scale'")
    template = t.table("template")
    if action == "rolling_update":
        parse_template(template)  # validate now; the controller overlays it on the old template later
    ev = Event(
        at_s=t.duration("at", hi=3600), action=action, target=target, index=t.integer("index", None, 0, 10_000),
        replicas=replicas, slow_factor=t.number("slow_factor", 5.0 if action == "slow_pod" else 1.0, 0.0, 1000.0),
        error_rate=t.number("error_rate", 1.0 if action == "fail_pod" else 0.0, 0.0, 1.0),
        template=dict(template.data), duration_s=t.duration("duration", None, lo=0.001, hi=3600),
        percent=t.number("percent", 2.0 if action == "packet_loss" else 0.0, 0.0, 100.0),
    )
    t.done()
    return ev


def _cross_check(config: Config, top: Table) -> None:
    f = config.path
    keys = {s.key for s in config.services}
    for i, s in enumerate(config.services):
        if not config.backing_workloads(s):
            raise ConfigError(f, f"services[{i}].selector",
                              f"selector {s.selector} matches no Deployment, StatefulSet or DaemonSet "
                              f"in namespace {s.namespace!r}")
    for i, ing in enumerate(config.ingresses):
        for j, r in enumerate(ing.rules):
            if r.service not in keys:
                raise ConfigError(f, f"ingresses[{i}].rules[{j}].service",
                                  f"expected the name of a Service in namespace {ing.namespace!r}; "
                                  f"{r.service.split('/')[1]!r} is not defined")
    if config.load.service not in keys:
        raise ConfigError(f, "load.service", f"expected the name of a defined Service; "
                                             f"{config.load.service!r} is not one of {sorted(keys)}")
    svc = config.service(config.load.service)
    for via in config.load.vias:
        if (via != "ClusterIP" and svc.type == "ClusterIP") or (via == "LoadBalancer" and svc.type != "LoadBalancer"):
            raise ConfigError(f, "load.via", f"Service {svc.name!r} is of type {svc.type}; it cannot be reached "
                                             f"via {via}")
    workloads = {w.key for w in config.workloads}
    nodes = {f"node-{n}" for n in range(config.cluster.nodes)}
    for i, ev in enumerate(config.events):
        kind, _, name = ev.target.partition("/")
        if kind in ("deployment", "statefulset", "daemonset") and ev.target not in workloads:
            raise ConfigError(f, f"events[{i}].target", f"no {kind} named {name!r}; defined: {sorted(workloads)}")
        if kind == "service" and not any(s.name == name for s in config.services):
            raise ConfigError(f, f"events[{i}].target", f"no Service named {name!r}; defined: "
                                                        f"{sorted(s.name for s in config.services)}")
        if kind == "node" and name not in nodes:
            raise ConfigError(f, f"events[{i}].target", f"no node named {name!r}; nodes are {sorted(nodes)}")
        if ev.at_s > config.run.duration_s:
            raise ConfigError(f, f"events[{i}].at", f"event at {ev.at_s}s is after the run's end "
                                                    f"(run.duration = {config.run.duration_s}s)")
    _check_event_indices(config)


_ONE_POD_ACTIONS = ("kill_pod", "delete_pod", "slow_pod", "fail_pod", "unready_pod", "recover_pod")


def _check_event_indices(config: Config) -> None:
    """An event's `index` names a pod of its workload that exists then: the workload's replicas,
    as the scale events before it left them (pods sorted by name; an index past them would wrap)."""
    replicas = {w.key: w.replicas for w in config.workloads}
    in_time = sorted(enumerate(config.events), key=lambda ie: ie[1].at_s)  # stable: file order at equal times
    for i, ev in in_time:
        if ev.action == "scale" and ev.replicas is not None:
            replicas[ev.target] = ev.replicas
        if ev.index is None:
            continue
        key = f"events[{i}].index"
        if ev.action not in _ONE_POD_ACTIONS or ev.target.partition("/")[0] in ("pod", "node"):
            raise ConfigError(config.path, key, f"index picks one pod of a workload; {ev.action} on "
                                                f"{ev.target} takes none")
        n = replicas.get(ev.target, 0)
        if ev.index >= n:
            raise ConfigError(config.path, key, f"expected a pod index below {n} ({ev.target} has {n} "
                                                f"replicas at {ev.at_s:g}s), got {ev.index}")
