"""The controller with real pod processes: replacement, fresh IPs, sync delay, ordered log."""

from __future__ import annotations

import asyncio
import random
import time

import pytest
import uvloop

from lbbench.cluster.controller import Controller
from lbbench.cluster.events import EventLog
from lbbench.config.parse import parse_config
from lbbench.config.schema import Config
from lbbench.model.service import Endpoint
from lbbench.system.procs import Supervisor

SYNC_S = 0.6
RESTART_S = 0.4


def make_config(extra: str = "", replicas: int = 3, kind: str = "deployments") -> Config:
    import tomllib

    base = random.randint(20, 70)  # own address block: no clash with a concurrent run
    text = f"""
[cluster]
nodes = 2
node_ip_base = {base}
[[{kind}]]
name = "web"
replicas = {replicas}
[{kind}.template]
service = "const:1ms"
[{kind}.template.readiness]
period = "50ms"
failureThreshold = 1
[[services]]
name = "web"
selector = {{ app = "web" }}
[run]
endpoint_sync_delay = "{SYNC_S}s"
restart_delay = "{RESTART_S}s"
node_grace_period = "1s"
{extra}
"""
    return parse_config("test.toml", tomllib.loads(text))


class Recorder:
    def __init__(self) -> None:
        self.updates: list[tuple[float, str, tuple[Endpoint, ...]]] = []

    async def __call__(self, key: str, eps: tuple[Endpoint, ...]) -> None:
        self.updates.append((time.monotonic(), key, eps))


async def wait_for(cond: object, timeout_s: float = 15.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not cond():  # type: ignore[operator]
            await asyncio.sleep(0.02)


def run(coro: object) -> None:
    uvloop.run(coro)  # type: ignore[arg-type]


def test_killed_pod_is_replaced_with_fresh_ip_after_delays() -> None:
    async def scenario() -> None:
        config = make_config()
        with Supervisor() as sup:
            log = EventLog()
            ctl = Controller(config, sup, log)
            rec = Recorder()
            ctl.subscribers.append(rec)
            await ctl.start()
            await ctl.wait_synced()
            ips_before = list(ctl.all_ips)
            assert len(ips_before) == 3 and len(set(ips_before)) == 3
            victim = ctl.resolve("deployment/web", 0)[0]
            killed_at = time.monotonic()
            await ctl.kill_pod(victim)
            await wait_for(lambda: len(log.of_kind("pod_started")) == 4)
            await ctl.wait_synced()
            new = log.of_kind("pod_started")[-1]
            new_ip = new.detail.split()[0].removeprefix("ip=")
            assert new_ip not in ips_before
            assert new.at_s + log.t0 >= killed_at + RESTART_S - 0.01
            died = log.of_kind("pod_died")[0]
            assert died.target == victim.name
            # Endpoints without the victim were computed at once but reached the front end only after the
            # sync delay, and the subscriber saw the old table until then. (What removed it may be its
            # failed readiness probe or its reaped process, whichever the controller saw first: on a busy
            # machine the probe can beat the reaper, so the change is found by its content, not by order.)
            changed = next(e for e in log.of_kind("endpoints_changed")
                           if e.at_s + log.t0 >= killed_at and victim.name not in e.detail.split())
            synced = next(e for e in log.of_kind("endpoints_synced") if e.at_s >= changed.at_s)
            assert synced.at_s - changed.at_s >= SYNC_S - 0.01
            first_without = next(t for t, _, eps in rec.updates
                                 if t >= killed_at and victim.name not in {e.pod for e in eps})
            assert first_without - log.t0 >= changed.at_s + SYNC_S - 0.01
            final = rec.updates[-1][2]
            assert len(final) == 3 and victim.ip not in {e.ip for e in final}
            times = [e.at_s for e in log.events]
            assert times == sorted(times)
            await ctl.stop()
        assert all(not c.alive() for c in sup.children)

    run(scenario())


def test_statefulset_keeps_names_and_gets_new_ip() -> None:
    async def scenario() -> None:
        config = make_config(kind="statefulsets")
        with Supervisor() as sup:
            log = EventLog()
            ctl = Controller(config, sup, log)
            await ctl.start()
            await ctl.wait_synced()
            started = [e.target for e in log.of_kind("pod_started")]
            assert started == ["web-0", "web-1", "web-2"]  # ordered start
            ready = [e.target for e in log.of_kind("pod_ready")]
            assert ready == started
            old_ip = ctl.resolve("pod/web-1", None)[0].ip
            await ctl.kill_pod(ctl.resolve("pod/web-1", None)[0])
            await wait_for(lambda: len(log.of_kind("pod_started")) == 4)
            again = log.of_kind("pod_started")[-1]
            assert again.target == "web-1" and f"ip={old_ip}" not in again.detail
            await ctl.stop()

    run(scenario())


def test_scale_delete_and_unready() -> None:
    async def scenario() -> None:
        config = make_config(replicas=2)
        with Supervisor() as sup:
            log = EventLog()
            ctl = Controller(config, sup, log)
            await ctl.start()
            await ctl.wait_synced()
            # An index past the live pods acts on none and says so (no wrap to pod 0).
            names = sorted(p.name for p in ctl.pods.values())
            assert [p.name for p in ctl.resolve("deployment/web", 1)] == names[1:]
            assert ctl.resolve("deployment/web", 2) == []
            (missed,) = log.of_kind("event_missed")
            assert (missed.target, missed.detail) == ("deployment/web", "index=2 live_pods=2")
            await ctl.scale("deployment/web", 4)
            await ctl.wait_synced()
            assert len(ctl.synced["default/web"]) == 4
            pod = ctl.resolve("deployment/web", 1)[0]
            ctl.set_faults(pod, ready=False)
            await wait_for(lambda: pod.name not in {e.pod for e in ctl.synced["default/web"]})
            await ctl.scale("deployment/web", 1)
            await wait_for(lambda: len(ctl.synced["default/web"]) <= 1)
            assert log.of_kind("pod_terminating")
            await ctl.stop()

    run(scenario())


@pytest.mark.slow
def test_node_down_keeps_endpoints_until_grace_period() -> None:
    async def scenario() -> None:
        config = make_config(replicas=4)
        with Supervisor() as sup:
            log = EventLog()
            ctl = Controller(config, sup, log)
            await ctl.start()
            await ctl.wait_synced()
            on_node1 = {p.name for p in ctl.pods.values() if p.node == 1}
            assert on_node1
            await ctl.node_down(1)
            await asyncio.sleep(0.5)  # pods are dead, but the node has not been declared NotReady yet
            assert on_node1 <= {e.pod for e in ctl.endpoints["default/web"]}
            await wait_for(lambda: not on_node1 & {e.pod for e in ctl.synced["default/web"]})
            await ctl.wait_synced()
            assert all(p.node == 0 for p in ctl.pods.values() if not p.dead)
            await ctl.stop()

    run(scenario())


def test_endpoint_updates_reach_a_slow_front_end_in_order_one_at_a_time() -> None:
    """A front end that takes time to apply an update (nft, a reload) must never see two at once."""

    class SlowFrontEnd:
        def __init__(self) -> None:
            self.active = 0
            self.max_active = 0
            self.seen: list[tuple[str, ...]] = []

        async def __call__(self, key: str, eps: tuple[Endpoint, ...]) -> None:
            self.active += 1
            self.max_active = max(self.max_active, self.active)
            await asyncio.sleep(0.15)
            self.seen.append(tuple(e.pod for e in eps))
            self.active -= 1

    async def scenario() -> None:
        config = make_config(replicas=1)
        with Supervisor() as sup:
            log = EventLog()
            ctl = Controller(config, sup, log)
            slow = SlowFrontEnd()
            ctl.subscribers.append(slow)
            await ctl.start()
            await ctl.wait_synced()
            await ctl.scale("deployment/web", 4)  # several Endpoints changes within one sync delay
            await ctl.wait_synced()
            await wait_for(lambda: slow.active == 0 and len(slow.seen) == len(log.of_kind("endpoints_changed")))
            changed = [tuple(e.detail.split()) for e in log.of_kind("endpoints_changed")]
            assert slow.max_active == 1
            assert slow.seen == changed  # every change, in the order it happened
            await ctl.stop()

    run(scenario())



def test_delete_is_graceful_prestop_then_sigterm() -> None:
    """Deletion: the endpoint stays, terminating and serving, through the preStop delay; then SIGTERM."""
    import dataclasses

    async def scenario() -> None:
        config = make_config(replicas=1)
        w = config.workloads[0]
        tpl = dataclasses.replace(w.template, pre_stop_delay_s=1.0, termination_grace_period_s=10.0)
        config = dataclasses.replace(config, workloads=(dataclasses.replace(w, template=tpl),))
        with Supervisor() as sup:
            log = EventLog()
            ctl = Controller(config, sup, log)
            rec = Recorder()
            ctl.subscribers.append(rec)
            await ctl.start()
            await ctl.wait_synced()
            victim = ctl.resolve("deployment/web", 0)[0]
            await ctl.delete_pod(victim)
            await wait_for(lambda: log.of_kind("pod_deleted"), timeout_s=30)
            (terminating,) = log.of_kind("pod_terminating")
            (sigterm,) = log.of_kind("pod_sigterm")
            assert sigterm.at_s - terminating.at_s >= 1.0 - 0.01  # the preStop delay ran first
            assert log.of_kind("pod_deleted")[0].at_s >= sigterm.at_s
            during = [eps for t, _, eps in rec.updates if terminating.at_s + log.t0 <= t < sigterm.at_s + log.t0]
            assert any(e.pod == victim.name and e.terminating and e.serving and not e.ready
                       for eps in during for e in eps)
            assert not log.of_kind("pod_sigkill")  # it exited in time
            await ctl.stop()

    run(scenario())
