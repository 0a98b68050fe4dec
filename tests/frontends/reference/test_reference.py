"""The reference front ends (HAProxy http/tcp, nginx, httpd) on real processes and sockets.

Each proxy's tests are skipped, with the reason, only when its binary is missing.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import http.client
import json
import os
import signal
import socket
import time
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import psutil
import pytest

from lbbench.cluster.standalone import fresh_ip, start_pod
from lbbench.errors import UserError
from lbbench.frontends.base import BackendHealth, Entrypoint, FrontendPlan
from lbbench.frontends.reference.common import ReferenceFrontend
from lbbench.frontends.reference.haproxy import HaproxyHttp, HaproxyTcp
from lbbench.frontends.reference.httpd import Httpd
from lbbench.frontends.reference.nginx import Nginx
from lbbench.model.addresses import HostPort
from lbbench.model.proxy import Balance, HealthCheck, ProxySettings
from lbbench.model.service import Endpoint, IngressRule, ServiceSpec
from lbbench.system.procs import Supervisor

T = TypeVar("T")
ALL: list[type[ReferenceFrontend]] = [HaproxyHttp, HaproxyTcp, Nginx, Httpd]
L7: list[type[ReferenceFrontend]] = [HaproxyHttp, Nginx, Httpd]


def params(classes: list[type[ReferenceFrontend]]) -> list[Any]:
    return [pytest.param(c, id=c.name, marks=pytest.mark.skipif(c.unavailable_reason() is not None,
                                                                 reason=c.unavailable_reason() or ""))
            for c in classes]


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


@pytest.fixture(scope="module")
def pods() -> Iterator[dict[str, HostPort]]:
    """Four fast pods shared by the module (they keep no state between requests)."""
    with Supervisor() as sup:
        yield {name: start_pod(sup, name)[1] for name in ("a", "b", "c", "d")}


def endpoints(pods: dict[str, HostPort], *names: str) -> tuple[Endpoint, ...]:
    return tuple(Endpoint(n, pods[n].host, pods[n].port) for n in names)


def service(name: str = "web") -> ServiceSpec:
    return ServiceSpec(name, "default", "ClusterIP", fresh_ip(), 8000, 8080)  # >= 1024: tests run as non-root too


def make_plan(*services: ServiceSpec, artifacts: Path | None = None, rules: tuple[IngressRule, ...] = (),
              proxy: ProxySettings | None = None) -> FrontendPlan:
    return FrontendPlan(services, ingress_ip=fresh_ip(), ingress_port=8080, ingress_rules=rules,
                        proxy=proxy or ProxySettings(maxconn=0), artifacts_dir=artifacts)


def request(ep: Entrypoint, path: str = "/", host: str | None = None) -> tuple[int, str | None, dict[str, str]]:
    """One GET on a fresh connection: (status, x-pod, headers)."""
    conn = http.client.HTTPConnection(ep.addr.host, ep.addr.port, timeout=10)
    try:
        headers = {}
        if (h := host or ep.host_header) is not None:
            headers["Host"] = h
        conn.request("GET", path, headers=headers)
        r = conn.getresponse()
        r.read()
        hs = {k.lower(): v for k, v in r.getheaders()}
        return r.status, hs.get("x-pod"), hs
    finally:
        conn.close()


def spread(ep: Entrypoint, n: int) -> collections.Counter[str | None]:
    return collections.Counter(request(ep)[1] for _ in range(n))


def gone(p: psutil.Process) -> bool:
    try:
        return not p.is_running() or p.status() == psutil.STATUS_ZOMBIE
    except psutil.Error:
        return True


@pytest.mark.parametrize("cls", params(ALL))
def test_requests_flow_to_all_pods(cls: type[ReferenceFrontend], pods: dict[str, HostPort],
                                   supervisor: Supervisor) -> None:
    svc = service()

    async def scenario() -> collections.Counter[str | None]:
        fe = cls(make_plan(svc), supervisor)
        await fe.start()
        try:
            await fe.update_endpoints(svc.key, endpoints(pods, "a", "b", "c"))
            return await asyncio.to_thread(spread, fe.entrypoint(svc.key), 60)
        finally:
            await fe.stop()

    seen = run(scenario())
    assert set(seen) == {"a", "b", "c"}, seen
    assert min(seen.values()) >= 5, seen  # round-robin gives 20 each; random(1) over 60 connections >= 5


@pytest.mark.parametrize("cls", params(ALL))
def test_endpoint_update_moves_traffic_and_is_recorded(cls: type[ReferenceFrontend], pods: dict[str, HostPort],
                                                        supervisor: Supervisor, tmp_path: Path) -> None:
    svc = service()

    async def scenario() -> tuple[list[collections.Counter[str | None]], dict[str, float]]:
        fe = cls(make_plan(svc, artifacts=tmp_path), supervisor)
        await fe.start()
        try:
            ep = fe.entrypoint(svc.key)
            seen = []
            for names in (("a", "b"), ("a",), ("a", "d")):
                await fe.update_endpoints(svc.key, endpoints(pods, *names))
                seen.append(await asyncio.to_thread(spread, ep, 40))
            return seen, await fe.counters()
        finally:
            await fe.stop()

    (both, only_a, with_d), counters = run(scenario())
    assert set(both) == {"a", "b"}
    assert set(only_a) == {"a"}, "a removed pod still got requests"
    assert set(with_d) == {"a", "d"}, "a new pod on a new IP got no requests"
    assert counters["reloads"] == 3
    assert 0 < counters["reload_s_max"] <= counters["reload_s_total"]
    configs = sorted(p.name for p in tmp_path.glob(f"*-{cls.config_name}"))
    assert configs == [f"{n:04d}-{cls.config_name}" for n in range(1, 5)]  # start + 3 updates
    updates = [json.loads(line) for line in (tmp_path / "updates.jsonl").read_text().splitlines()]
    assert [u["endpoints"] for u in updates] == [2, 1, 2]
    assert all(u["seconds"] > 0 for u in updates)


@pytest.mark.parametrize("cls", params(ALL))
def test_stop_leaves_no_process_behind(cls: type[ReferenceFrontend], pods: dict[str, HostPort],
                                       supervisor: Supervisor) -> None:
    svc = service()

    async def scenario() -> tuple[list[psutil.Process], Path]:
        fe = cls(make_plan(svc), supervisor)
        await fe.start()
        await fe.update_endpoints(svc.key, endpoints(pods, "a", "b"))  # a reload leaves old workers around
        await asyncio.to_thread(spread, fe.entrypoint(svc.key), 4)
        masters = [psutil.Process(pid) for pid in fe.pids()]
        family = [*masters, *(c for m in masters for c in m.children(recursive=True))]
        expected = 1 if isinstance(fe, Nginx) and fe.single_process else 2  # single: inside a user namespace
        assert fe.workdir is not None
        workdir = fe.workdir
        await fe.stop()
        await fe.stop()  # idempotent
        assert len(family) >= expected, "expected a master and its workers"
        return family, workdir

    family, workdir = run(scenario())
    assert [p.pid for p in family if not gone(p)] == []
    assert not workdir.exists()


@pytest.mark.parametrize("cls", params(ALL))
def test_no_endpoints_fail_fast(cls: type[ReferenceFrontend], supervisor: Supervisor) -> None:
    svc = service()

    async def scenario() -> tuple[float, int | None]:
        fe = cls(make_plan(svc, proxy=ProxySettings(maxconn=1, queue_timeout_s=10.0)), supervisor)
        await fe.start()
        try:
            ep = fe.entrypoint(svc.key)
            t0 = time.monotonic()
            try:
                status: int | None = (await asyncio.to_thread(request, ep))[0]
            except (ConnectionError, http.client.HTTPException):
                status = None  # rejected: the L4 reference closes the connection
            return time.monotonic() - t0, status
        finally:
            await fe.stop()

    took, status = run(scenario())
    assert status == (None if cls.layer == "l4" else 503)
    assert took < 5.0, "an empty Service must fail at once, not wait for the 10 s queue timeout"


@pytest.mark.parametrize("cls", params(L7))
def test_ingress_rules_route_by_host_and_path(cls: type[ReferenceFrontend], pods: dict[str, HostPort],
                                              supervisor: Supervisor) -> None:
    api, web = service("api"), service("web")
    rules = (IngressRule("shop.example", "/api", api.key), IngressRule("*", "/", web.key))

    async def scenario() -> dict[str, tuple[int, str | None]]:
        fe = cls(make_plan(api, web, rules=rules), supervisor)
        await fe.start()
        try:
            await fe.update_endpoints(api.key, endpoints(pods, "a"))
            await fe.update_endpoints(web.key, endpoints(pods, "b"))
            ep = fe.entrypoint(web.key)
            cases = {"shop.example /api/items": ("shop.example", "/api/items"),
                     "other.example /api/items": ("other.example", "/api/items"),
                     "shop.example /cart": ("shop.example", "/cart")}
            out = {}
            for label, (host, path) in cases.items():
                status, pod, _ = await asyncio.to_thread(request, ep, path, host)
                out[label] = (status, pod)
            return out
        finally:
            await fe.stop()

    got = run(scenario())
    assert got["shop.example /api/items"] == (200, "a")
    assert got["other.example /api/items"] == (200, "b")
    assert got["shop.example /cart"] == (404, None)  # a known host with no matching path


BALANCES: tuple[Balance, ...] = ("round-robin", "random", "least-conn", "p2c", "peak-ewma")


@pytest.mark.parametrize("cls", params(ALL))
def test_rendered_configs_pass_the_tools_own_check(cls: type[ReferenceFrontend], supervisor: Supervisor,
                                                   tmp_path: Path) -> None:
    """Every balance mode, with and without endpoints, several hosts and paths: `-c`/`-t` accept it."""
    api, web = service("api"), service("web")
    rules = (IngressRule("shop.example", "/api", api.key), IngressRule("shop.example", "/", web.key),
             IngressRule("*", "/static", web.key))
    eps = (Endpoint("p1", "127.200.0.1", 8080), Endpoint("p2", "127.200.0.2", 8081))

    async def check_all() -> int:
        checked = 0
        for i, balance in enumerate(BALANCES):
            for with_rules in (False, True):
                proxy = ProxySettings(balance=balance, maxconn=i, retries=i % 2 * 3, retry_idempotent=i < 3)
                fe = cls(make_plan(api, web, rules=rules if with_rules else (), proxy=proxy), supervisor)
                workdir = tmp_path / f"{balance}-{with_rules}"
                workdir.mkdir()
                fe.workdir = workdir
                fe.prepare_workdir(workdir)
                fe.endpoints[api.key] = eps
                for key in fe.endpoints:
                    fe.assign(key)
                fe.config_path.write_text(fe.render())
                await fe.check_config(fe.config_path)
                checked += 1
        return checked

    assert run(check_all()) == 2 * len(BALANCES)


@pytest.mark.parametrize("cls", params([Nginx]))
def test_a_refused_config_is_reported_clearly(cls: type[ReferenceFrontend], supervisor: Supervisor,
                                              tmp_path: Path) -> None:
    fe = cls(make_plan(service()), supervisor)
    fe.workdir = tmp_path
    fe.prepare_workdir(tmp_path)
    fe.config_path.write_text("events {}\nhttp { this is not nginx; }\n")
    with pytest.raises(UserError, match=r"nginx rejected .*unknown directive"):
        run(fe.check_config(fe.config_path))


def test_missing_binary_gives_the_install_hint() -> None:
    class Absent(HaproxyHttp):
        binary = "lbbench-no-such-proxy"
        package = "lbbench-no-such-package"

    expected = "lbbench-no-such-proxy not installed (apt-get install lbbench-no-such-package)"
    assert Absent.unavailable_reason() == expected


@pytest.mark.parametrize("cls", params([HaproxyHttp]))
def test_haproxy_queues_beyond_maxconn_not_the_pods(cls: type[ReferenceFrontend], supervisor: Supervisor) -> None:
    """maxconn 1, 4 slow pods (slots=1, 200 ms), 8 concurrent requests: the second four wait in HAProxy."""
    slow = {f"s{i}": start_pod(supervisor, f"s{i}", service="const:200ms", slots=1)[1] for i in range(4)}
    svc = service()

    async def scenario() -> tuple[list[tuple[int, float, float]], float]:
        fe = cls(make_plan(svc, proxy=ProxySettings(maxconn=1, queue_timeout_s=10.0)), supervisor)
        await fe.start()
        try:
            await fe.update_endpoints(svc.key, endpoints(slow, *slow))
            ep = fe.entrypoint(svc.key)

            def timed(_: int) -> tuple[int, float, float]:
                t0 = time.monotonic()
                status, _pod, headers = request(ep)
                return status, float(headers.get("x-queue-ms", "nan")), time.monotonic() - t0

            with concurrent.futures.ThreadPoolExecutor(8) as ex:
                results = asyncio.get_running_loop().run_in_executor(None, lambda: list(ex.map(timed, range(8))))
                queue_seen = 0.0
                while not results.done():
                    queue_seen = max(queue_seen, (await fe.counters()).get("queue_len", 0.0))
                    await asyncio.sleep(0.02)
                return await results, queue_seen
        finally:
            await fe.stop()

    results, queue_seen = run(scenario())
    assert [s for s, _, _ in results] == [200] * 8
    assert max(q for _, q, _ in results) < 50, "requests queued in the pods, not in HAProxy"
    assert sum(1 for _, _, took in results if took >= 0.35) >= 4, "no request waited for a free slot"
    assert queue_seen >= 1, "HAProxy's own queue never showed a waiting request"


@pytest.mark.parametrize("cls", params([HaproxyTcp]))
def test_haproxy_tcp_listens_on_every_service_address(cls: type[ReferenceFrontend], pods: dict[str, HostPort],
                                                      supervisor: Supervisor) -> None:
    svc = ServiceSpec("web", "default", "LoadBalancer", fresh_ip(), 8000, 8080, node_port=30080,
                      node_ips=(fresh_ip(), fresh_ip()), lb_ip=fresh_ip())

    async def scenario() -> list[str | None]:
        fe = cls(make_plan(svc), supervisor)
        await fe.start()
        try:
            await fe.update_endpoints(svc.key, endpoints(pods, "c"))
            eps = [fe.entrypoint(svc.key, via) for via in ("ClusterIP", "NodePort", "LoadBalancer")]
            eps.append(Entrypoint(HostPort(svc.node_ips[1], 30080)))
            return [(await asyncio.to_thread(request, ep))[1] for ep in eps]
        finally:
            await fe.stop()

    assert run(scenario()) == ["c"] * 4


def test_non_loopback_addresses_are_refused(supervisor: Supervisor) -> None:
    svc = service()
    with pytest.raises(ValueError, match=r"not in 127\.0\.0\.0/8"):
        HaproxyHttp(FrontendPlan((svc,), ingress_ip="10.0.0.1"), supervisor)
    fe = HaproxyHttp(make_plan(svc), supervisor)
    with pytest.raises(ValueError, match=r"not in 127\.0\.0\.0/8"):
        run(fe.update_endpoints(svc.key, (Endpoint("x", "192.168.1.5", 8080),)))


def test_a_privileged_service_port_needs_root_and_says_so(supervisor: Supervisor) -> None:
    if os.geteuid() == 0:
        pytest.skip("root may bind any port")
    svc = ServiceSpec("web", "default", "ClusterIP", fresh_ip(), 80, 8080)
    fe = HaproxyTcp(make_plan(svc), supervisor)
    with pytest.raises(UserError, match=r"ports below \d+ need root"):
        run(fe.start())


def test_a_port_already_taken_is_a_clear_error(supervisor: Supervisor) -> None:
    if HaproxyHttp.unavailable_reason() is not None:
        pytest.skip(HaproxyHttp.unavailable_reason() or "")
    plan = make_plan(service())
    with socket.socket() as s:
        s.bind((plan.ingress_ip, plan.ingress_port))
        s.listen()
        fe = HaproxyHttp(plan, supervisor)
        with pytest.raises(UserError, match="haproxy exited"):
            run(fe.start())
        run(fe.stop())


@pytest.mark.parametrize("cls", params([HaproxyHttp]))
def test_haproxy_grows_its_server_slots_with_one_process_reload(cls: type[ReferenceFrontend],
                                                               pods: dict[str, HostPort],
                                                               supervisor: Supervisor) -> None:
    """More endpoints than pre-allocated slots: re-render and reload the master; fewer: runtime API only."""
    svc = service()
    many = tuple(Endpoint(f"{n}{i}", pods[n].host, pods[n].port) for i in range(3) for n in "abc")  # 9 > 8 slots

    async def scenario() -> tuple[dict[str, float], dict[str, float], set[str | None], list[int], list[int]]:
        fe = cls(make_plan(svc), supervisor)
        await fe.start()
        try:
            master = fe.pids()
            await fe.update_endpoints(svc.key, many)
            grown = await fe.counters()
            seen = set((await asyncio.to_thread(spread, fe.entrypoint(svc.key), 18)).keys())
            await fe.update_endpoints(svc.key, endpoints(pods, "a", "b"))
            return grown, await fe.counters(), seen, master, fe.pids()
        finally:
            await fe.stop()

    grown, shrunk, seen, master_before, master_after = run(scenario())
    assert grown["process_reloads"] == 1
    assert seen == {"a", "b", "c"}
    assert shrunk["process_reloads"] == 1 and shrunk["reloads"] == 2
    assert master_before == master_after, "master-worker mode keeps the master across reloads"


@pytest.mark.parametrize("cls", params([HaproxyHttp]))
def test_haproxy_reports_its_checks_verdicts(cls: type[ReferenceFrontend], supervisor: Supervisor) -> None:
    """A pod that dies is marked down by HAProxy's own checks, told at once with the pod's name; back: up."""
    victim, victim_addr = start_pod(supervisor, "victim")
    _, other_addr = start_pod(supervisor, "other")
    svc = service()
    health = HealthCheck(interval_s=0.1, timeout_s=0.1, fall=2, rise=1)
    seen: list[BackendHealth] = []

    async def scenario() -> tuple[float, float]:
        fe = cls(make_plan(svc, proxy=ProxySettings(maxconn=0, health=health)), supervisor)
        fe.health_listener = seen.append
        await fe.start()
        try:
            await fe.update_endpoints(svc.key, (Endpoint("victim", victim_addr.host, victim_addr.port),
                                                Endpoint("other", other_addr.host, other_addr.port)))
            await asyncio.sleep(0.5)  # checks pass: nothing to tell
            killed = time.monotonic()
            victim.signal(signal.SIGKILL)
            while not seen and time.monotonic() < killed + 5:
                await asyncio.sleep(0.01)
            # taken before the start: HAProxy's check may see the pod listening before start_pod returns
            revived = time.monotonic()
            await asyncio.to_thread(start_pod, supervisor, "victim", ip=victim_addr.host, port=victim_addr.port)
            while len(seen) < 2 and time.monotonic() < revived + 5:
                await asyncio.sleep(0.01)
            return killed, revived
        finally:
            await fe.stop()

    killed, revived = run(scenario())
    assert [(c.state, c.backend) for c in seen] == [("down", "victim"), ("up", "victim")]
    down, up = seen
    assert "Layer4" in down.detail and str(victim_addr) in down.detail  # refused: HAProxy's L4 verdict
    # Seen when HAProxy said it (no polling): within `fall` checks of the death
    assert killed < down.at_monotonic_s <= killed + health.fall * health.interval_s + health.timeout_s + 0.3
    assert revived < up.at_monotonic_s


def test_proxy_settings_map_to_each_proxys_knobs(supervisor: Supervisor, tmp_path: Path) -> None:
    """The knobs the module docstrings promise appear in the renders (the tools' own checks cover syntax)."""
    svc = service()
    proxy = ProxySettings(maxconn=3, queue_timeout_s=2.5, balance="p2c", retries=2, eject_after=4)
    eps = endpoints({"a": HostPort("127.200.0.1", 8080)}, "a")
    renders = {}
    for cls in ALL:
        fe = cls(make_plan(svc, proxy=proxy), supervisor)
        fe.workdir = tmp_path
        fe.endpoints[svc.key] = eps
        fe.assign(svc.key)
        renders[cls.name] = fe.render()
    h, t, n, a = renders["haproxy"], renders["haproxy-tcp"], renders["nginx"], renders["httpd"]
    for knob in ("balance random(2)", "timeout queue 2500ms", "retries 2", "option redispatch", "maxconn 3",
                 "option httpchk GET /healthz", "server s1 127.200.0.1:8080 check inter 500 fall 2 rise 1"):
        assert knob in h, knob
    for knob in ("mode tcp", "balance random(1)", "retries 0", f"bind {svc.cluster_ip}:8000"):
        assert knob in t, knob
    assert "check" not in t and "maxconn 3" not in t and "redispatch" not in t
    for knob in ("random two least_conn;", "max_conns=3 max_fails=4 fail_timeout=1s", "proxy_next_upstream_tries 3;"):
        assert knob in n, knob
    for knob in ("lbmethod=bybusyness maxattempts=2", "max=3 acquire=2500", "hcuri=/healthz"):
        assert knob in a, knob
