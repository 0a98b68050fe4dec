"""The proxy's whole configuration, from a FrontendPlan file and/or overrides.

`lbbench serve proxy --plan FILE.json` reads the plan the L7Proxy front end wrote; flags given
on the command line (lbbench.commands.serve.proxy) override the plan's ProxySettings. Without a
plan, `--backend` flags make one Service ("default/default") that every Host reaches.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lbbench.frontends.base import FrontendPlan
from lbbench.frontends.proxy.discovery import DiscoverySettings
from lbbench.model.addresses import HostPort, require_loopback
from lbbench.model.proxy import BALANCES, HealthCheck, ProxySettings
from lbbench.model.service import Endpoint, IngressRule, ServiceSpec

PLAN_VERSION = 1


@dataclass(frozen=True)
class Limits:
    """What a client may send before the proxy refuses (HAProxy's bufsize, nginx's buffers)."""

    max_header_bytes: int = 16 * 1024  # request line + header fields -> 431
    max_headers: int = 100  # header fields -> 431
    max_body_bytes: int = 64 * 1024 * 1024  # -> 413
    max_clients: int = 10_000  # client connections; beyond, new ones get 503 and are closed


@dataclass(frozen=True)
class ProxyConfig:
    listen: HostPort
    stats: HostPort | None
    services: tuple[ServiceSpec, ...]
    rules: tuple[IngressRule, ...]
    endpoints: tuple[tuple[str, tuple[Endpoint, ...]], ...]  # initial Endpoints per Service key
    settings: ProxySettings = ProxySettings()
    limits: Limits = Limits()
    seed: int = 0
    default_service: str | None = field(default=None)  # reached by any Host when there are no rules
    discovery: DiscoverySettings | None = None  # --backend-dns: the default Service's pods from DNS


# -- plan files -------------------------------------------------------------------------------

def plan_to_json(plan: FrontendPlan) -> str:
    data = dataclasses.asdict(plan)
    data["artifacts_dir"] = str(plan.artifacts_dir) if plan.artifacts_dir is not None else None
    return json.dumps({"version": PLAN_VERSION, "plan": data}, indent=2)


def _build(cls: Any, data: Any, where: str) -> Any:
    if not isinstance(data, dict):
        raise ValueError(f"plan: {where} must be an object")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ValueError(f"plan: {where} has unknown key {sorted(unknown)[0]!r}")
    try:
        return cls(**data)
    except TypeError as e:
        raise ValueError(f"plan: {where}: {e}") from None


def plan_from_json(text: str) -> FrontendPlan:
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"plan file is not JSON: {e}") from None
    if not isinstance(doc, dict) or doc.get("version") != PLAN_VERSION or not isinstance(doc.get("plan"), dict):
        raise ValueError(f"plan file must be {{'version': {PLAN_VERSION}, 'plan': {{...}}}}")
    p = dict(doc["plan"])
    proxy = dict(p.get("proxy") or {})
    proxy["health"] = _build(HealthCheck, proxy.get("health") or {}, "proxy.health")
    p["proxy"] = _build(ProxySettings, proxy, "proxy")
    p["services"] = tuple(
        _build(ServiceSpec, {**s, "node_ips": tuple(s.get("node_ips", ()))}, f"services[{i}]")
        for i, s in enumerate(p.get("services") or ()))
    p["ingress_rules"] = tuple(_build(IngressRule, r, f"ingress_rules[{i}]")
                               for i, r in enumerate(p.get("ingress_rules") or ()))
    p["artifacts_dir"] = Path(p["artifacts_dir"]) if p.get("artifacts_dir") else None
    plan: FrontendPlan = _build(FrontendPlan, p, "plan")
    return plan


def _positive(name: str, value: float, *, zero_ok: bool = False) -> None:
    if value < 0 or (value == 0 and not zero_ok):
        raise ValueError(f"--{name.replace('_', '-')} must be {'>= 0' if zero_ok else '> 0'}, got {value:g}")


def validate_settings(s: ProxySettings) -> None:
    for name in ("maxconn", "max_queue", "retries", "eject_after"):
        _positive(name, getattr(s, name), zero_ok=True)
    for name in ("queue_timeout_s", "connect_timeout_s", "server_timeout_s", "client_timeout_s"):
        _positive(name.removesuffix("_s"), getattr(s, name))
    _positive("workers", s.workers)
    _positive("health_interval", s.health.interval_s, zero_ok=True)
    _positive("health_timeout", s.health.timeout_s)
    _positive("health_fall", s.health.fall)
    _positive("health_rise", s.health.rise)
    if s.balance not in BALANCES:
        raise ValueError(f"balance {s.balance!r} is not one of {', '.join(BALANCES)}")
    if not s.health.path.startswith("/"):
        raise ValueError(f"health path {s.health.path!r} must start with '/'")


@dataclass(frozen=True)
class ProxyOverrides:
    """What the command line sets over a plan (or, without one, instead of it); None keeps the plan's."""

    listen: HostPort | None = None
    backends: tuple[HostPort, ...] = ()  # the default Service's Endpoints
    stats: HostPort | None = None
    settings: Mapping[str, Any] = field(default_factory=dict)  # ProxySettings fields
    health: Mapping[str, Any] = field(default_factory=dict)  # HealthCheck fields
    limits: Limits = Limits()
    seed: int | None = None
    discovery: DiscoverySettings | None = None  # the default Service's Endpoints from DNS instead


def config_from(plan: FrontendPlan | None, over: ProxyOverrides) -> ProxyConfig:
    """The proxy's configuration: `plan` (if any) with `over` applied, validated."""
    if over.discovery is not None and (plan is not None or over.backends):
        raise ValueError("--backend-dns finds the backends itself: give it without --backend and --plan")
    if plan is None and not over.backends and over.discovery is None:
        raise ValueError("give --backend IP:PORT (one or more), --backend-dns NAME:PORT or --plan FILE")
    if over.listen is not None:
        listen = over.listen
    elif plan is not None:
        listen = HostPort(require_loopback(plan.ingress_ip, "ingress_ip"), plan.ingress_port)
    else:
        raise ValueError("--listen IP:PORT is required without --plan")
    settings = plan.proxy if plan is not None else ProxySettings()
    settings = dataclasses.replace(settings, **over.settings,
                                   health=dataclasses.replace(settings.health, **over.health))
    validate_settings(settings)
    for f in dataclasses.fields(over.limits):
        _positive(f.name, getattr(over.limits, f.name))
    services = plan.services if plan is not None else ()
    if not services:
        services = (ServiceSpec("default", "default", "ClusterIP", listen.host, listen.port, 0),)
    eps: list[tuple[str, tuple[Endpoint, ...]]] = [(s.key, ()) for s in services]
    if over.backends:
        key, _ = eps[0]
        eps[0] = (key, tuple(Endpoint(f"{b.host}:{b.port}", b.host, b.port) for b in over.backends))
    rules = plan.ingress_rules if plan is not None else ()
    keys = {s.key for s in services}
    for r in rules:
        if r.service not in keys:
            raise ValueError(f"Ingress rule {r.host} {r.path} names Service {r.service!r}, which the plan lacks")
    seed = over.seed if over.seed is not None else plan.seed if plan is not None else 0
    return ProxyConfig(listen, over.stats, services, rules, tuple(eps), settings, over.limits, seed,
                       None if rules else services[0].key, over.discovery)
