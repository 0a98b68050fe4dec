"""L7Proxy as a front end: plan file, Ingress routing, Endpoints updates (drain, restart window), counters."""

from __future__ import annotations

import asyncio
import collections
import json
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest
import uvloop
from helpers.proxy import keepalive_load, parse_responses, raw_exchange, request_bytes

from lbbench.cluster.standalone import fresh_ip, start_pod
from lbbench.frontends.base import BackendHealth, FrontendPlan
from lbbench.frontends.proxy.config import plan_from_json, plan_to_json
from lbbench.frontends.proxy.frontend import L7Proxy
from lbbench.model.addresses import HostPort
from lbbench.model.proxy import HealthCheck, ProxySettings
from lbbench.model.service import Endpoint, IngressRule, ServiceSpec
from lbbench.system.procs import Supervisor, lbbench_argv


def _svc(name: str) -> ServiceSpec:
    return ServiceSpec(name, "shop", "ClusterIP", fresh_ip(), 80, 8080)


def _ep(name: str, addr: HostPort) -> Endpoint:
    return Endpoint(name, addr.host, addr.port, "node-1")


def _get(addr: HostPort, path: str, host: str | None) -> tuple[int, str, bytes]:
    raw = request_bytes(path, host=host or "unrouted.example", headers=[("Connection", "close")])
    (reply,) = parse_responses(raw_exchange(addr, raw))
    return reply.status, reply.headers.get("x-pod", ""), reply.body


def test_plan_round_trips_through_json(tmp_path: Path) -> None:
    plan = FrontendPlan((_svc("a"), _svc("b")), ingress_rules=(IngressRule("*", "/b", "shop/b"),),
                        proxy=ProxySettings(maxconn=2, health=HealthCheck(interval_s=0.1)), artifacts_dir=tmp_path)
    assert plan_from_json(plan_to_json(plan)) == plan
    with pytest.raises(ValueError, match="unknown key 'bogus'"):
        plan_from_json(json.dumps({"version": 1, "plan": {"services": [], "bogus": 1}}))
    with pytest.raises(ValueError, match="version"):
        plan_from_json("{}")


def test_ingress_rules_route_and_entrypoints_name_the_host(supervisor: Supervisor, tmp_path: Path) -> None:
    a, b = _svc("a"), _svc("b")
    _, pod_a = start_pod(supervisor, "pod-a")
    _, pod_b = start_pod(supervisor, "pod-b")
    rules = (IngressRule("a.example", "/", "shop/a"), IngressRule("*", "/b", "shop/b"))
    plan = FrontendPlan((a, b), ingress_ip=fresh_ip(), ingress_rules=rules, artifacts_dir=tmp_path)
    fe = L7Proxy(plan, supervisor)

    async def main() -> None:
        await fe.start()
        try:
            assert (tmp_path / "l7-proxy-plan.json").exists()
            assert fe.child is not None and fe.pids() == [fe.child.pid]
            await fe.update_endpoints("shop/a", (_ep("pod-a", pod_a),))
            await fe.update_endpoints("shop/b", (_ep("pod-b", pod_b),))
            ep_a, ep_b = fe.entrypoint("shop/a"), fe.entrypoint("shop/b")
            assert ep_a.host_header == "a.example" and ep_b.host_header is None
            assert ep_a.addr == HostPort(plan.ingress_ip, 8080)
            loop = asyncio.get_running_loop()
            assert (await loop.run_in_executor(None, _get, ep_a.addr, "/x", "a.example:8080"))[:2] == (200, "pod-a")
            assert (await loop.run_in_executor(None, _get, ep_a.addr, "/b/1", "other"))[:2] == (200, "pod-b")
            status, _, body = await loop.run_in_executor(None, _get, ep_a.addr, "/c", "other")
            assert status == 404 and b"no Ingress rule" in body
            counters = await fe.counters()
            assert counters["responses_2xx"] == 2 and counters["responses_4xx"] == 1
            assert counters["in_flight[shop/a/pod-a]"] == 0
            assert {"queue_len", "in_flight_total", "retries", "queue_timeouts"} <= set(counters)
            with pytest.raises(ValueError, match="no Service"):
                fe.entrypoint("shop/zzz")
        finally:
            await fe.stop()
            await fe.stop()  # idempotent
        assert fe.pids() == []

    uvloop.run(main())


def test_without_rules_services_are_reached_by_their_cluster_dns_name(supervisor: Supervisor) -> None:
    a, b = _svc("a"), _svc("b")
    _, pod_a = start_pod(supervisor, "pod-a")
    _, pod_b = start_pod(supervisor, "pod-b")
    fe = L7Proxy(FrontendPlan((a, b), ingress_ip=fresh_ip()), supervisor)

    async def main() -> None:
        await fe.start()
        try:
            await fe.update_endpoints("shop/a", (_ep("pod-a", pod_a),))
            await fe.update_endpoints("shop/b", (_ep("pod-b", pod_b),))
            ep = fe.entrypoint("shop/b")
            assert ep.host_header == "b.shop.svc.cluster.local"
            loop = asyncio.get_running_loop()
            assert (await loop.run_in_executor(None, _get, ep.addr, "/", ep.host_header))[1] == "pod-b"
            assert (await loop.run_in_executor(None, _get, ep.addr, "/", "who.knows"))[1] == "pod-a"  # default
        finally:
            await fe.stop()

    uvloop.run(main())


def test_the_proxy_acknowledges_each_update_and_a_refused_one_is_sync_failed(supervisor: Supervisor) -> None:
    """Same contract as DNAT: update_endpoints returns once the proxy applied it, or raises its reason."""
    import tomllib

    from lbbench.cluster.controller import Controller
    from lbbench.cluster.events import EventLog
    from lbbench.config.parse import parse_config

    _, pod_a = start_pod(supervisor, "pod-a")
    fe = L7Proxy(FrontendPlan((_svc("a"),), ingress_ip=fresh_ip()), supervisor)
    # The cluster's Service default/web is not in the proxy's plan: the proxy must refuse its Endpoints.
    config = parse_config("test.toml", tomllib.loads(f"""
[cluster]
node_ip_base = {random.randint(20, 70)}
[[deployments]]
name = "web"
replicas = 1
[deployments.template]
service = "const:1ms"
[[services]]
name = "web"
selector = {{ app = "web" }}
[run]
endpoint_sync_delay = "0.05s"
"""))

    async def main() -> None:
        await fe.start()
        log = EventLog()
        ctl = Controller(config, supervisor, log)
        ctl.subscribers.append(fe.update_endpoints)
        try:
            await fe.update_endpoints("shop/a", (_ep("pod-a", pod_a),))  # acknowledged: serving at once
            ep = fe.entrypoint("shop/a")
            loop = asyncio.get_running_loop()
            assert (await loop.run_in_executor(None, _get, ep.addr, "/", ep.host_header))[1] == "pod-a"
            with pytest.raises(ValueError, match=r"127\.0\.0\.0/8"):
                await fe.update_endpoints("shop/a", (Endpoint("far", "10.0.0.1", 80),))
            assert (await loop.run_in_executor(None, _get, ep.addr, "/", ep.host_header))[1] == "pod-a"  # kept
            await ctl.start()
            await ctl.wait_synced()
            async with asyncio.timeout(15):
                while not log.of_kind("sync_failed"):
                    await asyncio.sleep(0.02)
            (failed,) = log.of_kind("sync_failed")
            assert failed.target == "default/web"
            assert "ValueError" in failed.detail and "unknown Service 'default/web'" in failed.detail
        finally:
            await ctl.stop()
            await fe.stop()

    uvloop.run(main())


def test_proxy_workers_acknowledge_an_update_together_or_refuse_it(supervisor: Supervisor) -> None:
    """With `workers = 2` the manager answers for both workers: ok once each applied it, or the reason."""
    _, pod_a = start_pod(supervisor, "pod-a")
    fe = L7Proxy(FrontendPlan((_svc("a"),), ingress_ip=fresh_ip(), proxy=ProxySettings(workers=2)), supervisor)

    async def main() -> None:
        await fe.start()
        try:
            await fe.update_endpoints("shop/a", (_ep("pod-a", pod_a),))
            ep = fe.entrypoint("shop/a")
            loop = asyncio.get_running_loop()
            served = {(await loop.run_in_executor(None, _get, ep.addr, "/", ep.host_header))[1] for _ in range(8)}
            assert served == {"pod-a"}  # whichever worker accepted, it had the update already
            with pytest.raises(ValueError, match="unknown Service 'shop/zzz'"):
                await fe.update_endpoints("shop/zzz", (_ep("pod-a", pod_a),))
            with pytest.raises(ValueError, match=r"127\.0\.0\.0/8"):
                await fe.update_endpoints("shop/a", (Endpoint("far", "10.0.0.1", 80),))
        finally:
            await fe.stop()

    uvloop.run(main())


@pytest.mark.parametrize("workers", [1, 2])
def test_the_proxys_checks_verdicts_reach_the_run_with_the_time_it_knew(supervisor: Supervisor,
                                                                          workers: int) -> None:
    """backend_down / backend_up lines on the proxy's stdout (through the manager, for workers) become
    BackendHealth for the run's listener, stamped on the proxy's own clock."""
    victim, victim_addr = start_pod(supervisor, "victim")
    _, other = start_pod(supervisor, "other")
    health = HealthCheck(interval_s=0.1, timeout_s=0.1, fall=2)
    fe = L7Proxy(FrontendPlan((_svc("a"),), ingress_ip=fresh_ip(), proxy=ProxySettings(workers=workers,
                                                                                     health=health)), supervisor)
    seen: list[BackendHealth] = []
    fe.health_listener = seen.append

    async def main() -> float:
        await fe.start()
        try:
            await fe.update_endpoints("shop/a", (_ep("victim", victim_addr), _ep("other", other)))
            await asyncio.sleep(0.4)
            killed = time.monotonic()
            victim.signal(signal.SIGKILL)
            while len(seen) < workers and time.monotonic() < killed + 5:
                await asyncio.sleep(0.01)
            return killed
        finally:
            await fe.stop()

    killed = uvloop.run(main())
    assert [(c.state, c.backend) for c in seen] == [("down", "victim")] * workers  # each worker checks on its own
    bound = killed + health.fall * health.interval_s + health.timeout_s + 0.3
    assert all(killed < c.at_monotonic_s <= bound and str(victim_addr) in c.detail for c in seen)
    assert all("the last unreachable" in c.detail for c in seen)  # refused: the checks cannot connect
    assert workers == 1 or {c.detail.rsplit("(", 1)[-1] for c in seen} == {"worker 0)", "worker 1)"}


def test_removed_backend_drains_its_in_flight_request(supervisor: Supervisor) -> None:
    svc = _svc("web")
    _, old = start_pod(supervisor, "old")
    _, new = start_pod(supervisor, "new")
    fe = L7Proxy(FrontendPlan((svc,), ingress_ip=fresh_ip()), supervisor)

    async def main() -> None:
        await fe.start()
        try:
            await fe.update_endpoints("shop/web", (_ep("old", old),))
            ep = fe.entrypoint("shop/web")
            loop = asyncio.get_running_loop()
            slow = loop.run_in_executor(None, _get, ep.addr, "/?delay=600ms:100", ep.host_header)
            await asyncio.sleep(0.2)
            await fe.update_endpoints("shop/web", (_ep("new", new),))
            after = await loop.run_in_executor(None, _get, ep.addr, "/", ep.host_header)
            assert after[:2] == (200, "new")
            assert (await slow)[:2] == (200, "old")  # finished on the pod that left the Endpoints
            doc = await fe.stats()
            assert [b["pod"] for b in doc["services"]["shop/web"]["backends"]] == ["new"]
        finally:
            await fe.stop()

    uvloop.run(main())


@pytest.mark.slow
def test_active_passive_restart_window_is_absorbed_by_the_queue(supervisor: Supervisor) -> None:
    """The only pod dies; a new one (new IP) is ready 1 s later and synced 0.3 s after: no client error."""
    svc = _svc("web")
    settings = ProxySettings(maxconn=1, queue_timeout_s=15.0, health=HealthCheck(interval_s=0.2))
    fe = L7Proxy(FrontendPlan((svc,), ingress_ip=fresh_ip(), proxy=settings), supervisor)
    first, addr1 = start_pod(supervisor, "web-1", service="const:2ms")

    async def main() -> None:
        await fe.start()
        try:
            await fe.update_endpoints("shop/web", (_ep("web-1", addr1),))
            ep = fe.entrypoint("shop/web")
            done = asyncio.Event()
            load = asyncio.create_task(keepalive_load(
                ep.addr, request_bytes("/", host=ep.host_header or ""), connections=4, stop=done))
            await asyncio.sleep(1.0)
            killed_at = time.monotonic()
            first.signal(signal.SIGKILL)
            await asyncio.sleep(1.0)
            _, addr2 = await asyncio.to_thread(start_pod, supervisor, "web-2", service="const:2ms")
            await asyncio.sleep(0.3)  # the Endpoints sync delay
            await fe.update_endpoints("shop/web", (_ep("web-2", addr2),))
            window_s = time.monotonic() - killed_at
            await asyncio.sleep(1.0)
            done.set()
            replies = await load
            counters = await fe.counters()
        finally:
            await fe.stop()
        statuses = collections.Counter(r.status for r in replies)
        assert statuses == {200: len(replies)}, (statuses, [r.body[:80] for r in replies if r.status != 200][:3])
        pods = collections.Counter(r.headers["x-pod"] for r in replies)
        assert pods["web-1"] > 10 and pods["web-2"] > 10
        assert max(r.latency_s for r in replies) >= 0.8 * window_s  # they waited out the window
        assert counters["queue_wait_max_s"] >= 0.5 * window_s
        assert counters["queue_timeouts"] == 0

    uvloop.run(main())


def test_serve_proxy_bad_arguments_exit_2_without_traceback(tmp_path: Path) -> None:
    bad_plan = tmp_path / "plan.json"
    bad_plan.write_text("{not json")
    cases = (
        ["--listen", "10.0.0.1:80", "--backend", "127.0.0.1:1"],
        ["--listen", "127.0.0.1:0"],
        ["--listen", "127.0.0.1:0", "--backend", "8.8.8.8:80"],
        ["--listen", "127.0.0.1:0", "--backend", "127.0.0.1:1", "--queue-timeout", "0"],
        ["--listen", "127.0.0.1:0", "--backend", "127.0.0.1:1", "--maxconn", "-1"],
        ["--plan", str(bad_plan)],
        ["--plan", str(tmp_path / "missing.json")],
    )
    for argv in cases:
        proc = subprocess.run([*lbbench_argv("serve", "proxy"), *argv], capture_output=True, text=True,
                              timeout=30, stdin=subprocess.DEVNULL)
        assert proc.returncode == 2, (argv, proc.stderr)
        assert "Traceback" not in proc.stderr
        assert "error" in proc.stderr
