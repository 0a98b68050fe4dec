"""Kernel front ends sync like kube-proxy: partial iptables restores, one nft transaction per sync."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import pytest
from helpers.kernel_sync_scenarios import COUNT, endpoints, services
from helpers.paths import KERNEL_SYNC_SCENARIOS
from test_nftables import run_in_netns

from lbbench.frontends.base import FrontendPlan
from lbbench.frontends.kernel.frontend import Change, KernelFrontend
from lbbench.frontends.kernel.iptables import render_iptables, render_partial, sep_chain, svc_chain
from lbbench.frontends.kernel.nftables import endpoint_chain, render_sync, service_chain
from lbbench.model.service import ServiceSpec
from lbbench.system.netns import find_tool, netns_unavailable_reason
from lbbench.system.procs import Supervisor

SCENARIOS = KERNEL_SYNC_SCENARIOS
needs_netns = pytest.mark.skipif(netns_unavailable_reason() is not None,
                                 reason=f"no private user+net namespace: {netns_unavailable_reason()}")


def _declared_and_written(text: str) -> tuple[set[str], set[str]]:
    nat = text[text.index("*nat"):]
    declared = {line[1:].split()[0] for line in nat.splitlines() if line.startswith(":")}
    written = {line.split()[1] for line in nat.splitlines() if line.startswith("-A ")}
    return declared, written


def test_partial_restore_names_only_the_changed_service_and_top_level_chains() -> None:
    svcs = services()
    state = {s.key: endpoints(i) for i, s in enumerate(svcs)}
    changed = svcs[7]
    new = endpoints(7, 3, offset=100)
    text = render_partial(svcs, {changed: (state[changed.key], new)}, {**state, changed.key: new})
    declared, written = _declared_and_written(text)
    own = {svc_chain(changed), *(sep_chain(changed, ep) for ep in (*state[changed.key], *new))}
    assert declared == {"KUBE-SERVICES", "KUBE-NODEPORTS"} | own
    assert written <= {"KUBE-SERVICES", "KUBE-NODEPORTS", svc_chain(changed), *(sep_chain(changed, e) for e in new)}
    stale = {line.split()[1] for line in text.splitlines() if line.startswith("-X ")}
    assert stale == {sep_chain(changed, ep) for ep in state[changed.key]}
    # KUBE-SERVICES is rewritten in full every time: that is what stays O(n) after KEP-3453
    assert sum(line.startswith("-A KUBE-SERVICES ") for line in text.splitlines()) == COUNT


def test_full_restore_counts_match_services_and_endpoints() -> None:
    svcs = services(10)
    state = {s.key: endpoints(i, 3) for i, s in enumerate(svcs)}
    text = render_iptables(svcs, state)
    nat = text[text.index("*nat"):].splitlines()
    assert sum(line.startswith("-A KUBE-SERVICES ") for line in nat) == 10
    assert sum(line.startswith("-A KUBE-SVC-") for line in nat) == 30
    assert sum(line.startswith("-A KUBE-SEP-") for line in nat) == 30
    assert "--comment" in text.split("-A KUBE-SVC-")[1]  # small cluster: endpoint rules keep their comments


def test_large_cluster_drops_comments_on_endpoint_rules_only() -> None:
    svcs = services(600)
    text = render_iptables(svcs, {s.key: endpoints(i) for i, s in enumerate(svcs)})  # 1200 endpoints > 1000
    lines = text.splitlines()
    assert not any("--comment" in line for line in lines if line.startswith(("-A KUBE-SVC-", "-A KUBE-SEP-")))
    assert all("--comment" in line for line in lines if line.startswith("-A KUBE-SERVICES "))


def test_one_nft_sync_across_services_is_one_transaction_touching_only_them() -> None:
    svcs = services()
    state = {s.key: endpoints(i) for i, s in enumerate(svcs)}
    changes: dict[ServiceSpec, Change] = {svcs[i]: (state[svcs[i].key], endpoints(i, 3, offset=100))
                                          for i in (3, 5, 9)}
    [text] = render_sync(changes)
    others = [s for i, s in enumerate(svcs) if i not in (3, 5, 9)]
    assert all(service_chain(s) not in text for s in others)
    for spec, (previous, new) in changes.items():
        assert service_chain(spec) in text
        assert all(endpoint_chain(spec, ep) in text for ep in (*previous, *new))
    assert "flush chain ip lbbench services\n" not in text  # the lookup chain is not rewritten


def sync_scenario(sup: Supervisor, *args: str) -> dict[str, Any]:
    """Run tests/helpers/kernel_sync_scenarios.py in a private namespace; its JSON."""
    r = run_in_netns(sup, [sys.executable, str(SCENARIOS), *args], timeout_s=300)
    assert r.returncode == 0, r.stderr[-3000:]
    result: dict[str, Any] = json.loads(r.stdout)
    return result


class _Recorder(KernelFrontend):
    """The sync loop alone: renders are recorded, the applier is a stub that sleeps."""

    name = "recorder"

    def __init__(self, plan: FrontendPlan, supervisor: Supervisor) -> None:
        super().__init__(plan, supervisor)
        self.rendered: list[set[str]] = []

    def make_applier(self, directory: Path | None) -> Any:
        raise NotImplementedError

    def check(self, services: Any) -> None:
        pass

    def render_full(self, endpoints: Any) -> list[str]:
        return []

    def render_sync(self, changes: Any, proposed: Any) -> list[str]:
        self.rendered.append({spec.key for spec in changes})
        return ["x"]

    def render_stop(self) -> str:
        return ""


class _SlowApplier:
    last_cpu_s = 0.0

    async def apply(self, text: str, reason: str, args: Any = ()) -> float:
        await asyncio.sleep(0.05)
        return 0.05


def test_changes_arriving_during_a_sync_wait_for_the_next_and_go_together(supervisor: Supervisor) -> None:
    svcs = services(6)
    fe = _Recorder(FrontendPlan(tuple(svcs)), supervisor)
    fe.applier = _SlowApplier()  # type: ignore[assignment]

    async def main() -> None:
        first = asyncio.create_task(fe.update_endpoints(svcs[0].key, endpoints(0)))
        await asyncio.sleep(0.01)  # the first sync is being applied
        await asyncio.gather(first, *(fe.update_endpoints(s.key, endpoints(i)) for i, s in enumerate(svcs) if i))

    asyncio.run(main())
    assert fe.rendered == [{svcs[0].key}, {s.key for s in svcs[1:]}]
    assert all(fe.endpoints[s.key] == endpoints(i) for i, s in enumerate(svcs))


def test_a_failed_sync_fails_every_caller_and_keeps_the_old_endpoints(supervisor: Supervisor) -> None:
    svcs = services(3)
    fe = _Recorder(FrontendPlan(tuple(svcs)), supervisor)

    class Refuses(_SlowApplier):
        async def apply(self, text: str, reason: str, args: Any = ()) -> float:
            raise RuntimeError("refused")

    fe.applier = Refuses()  # type: ignore[assignment]

    async def main() -> list[BaseException | None]:
        return await asyncio.gather(*(fe.update_endpoints(s.key, endpoints(i)) for i, s in enumerate(svcs)),
                                    return_exceptions=True)

    results = asyncio.run(main())
    assert all(isinstance(r, RuntimeError) for r in results)
    assert all(fe.endpoints[s.key] == () for s in svcs)


@pytest.mark.netns
@needs_netns
# iptables-nft talks netlink: inside a user namespace one restore must fit its buffer (~50 Services x 2 at once)
@pytest.mark.parametrize(("backend", "count"), [("legacy", COUNT), ("nft", 40)])
def test_iptables_partial_sync_in_the_kernel(supervisor: Supervisor, backend: str, count: int) -> None:
    if find_tool(f"iptables-{backend}-restore") is None:
        pytest.skip(f"iptables-{backend}-restore not installed")
    out = sync_scenario(supervisor, "iptables", backend, str(count))
    assert out["backend"] == {"legacy": "legacy", "nft": "nf_tables"}[backend]
    before, after = out["before"], out["after"]
    svcs = services(count)
    changed = svcs[7]
    assert len(before["KUBE-SERVICES"]) == count
    assert sum(c.startswith("KUBE-SVC-") for c in before) == count
    assert sum(c.startswith("KUBE-SEP-") for c in before) == 2 * count
    assert sum(len(rules) for c, rules in before.items() if c.startswith("KUBE-S")) == count * 5
    # the endpoint change rewrote that Service's chains only; every other chain is as it was
    untouched = {c for c in before if c not in ("KUBE-SERVICES", svc_chain(changed))
                 and c not in {sep_chain(changed, ep) for ep in endpoints(7)}}
    assert all(after[c] == before[c] for c in untouched)
    assert len(after[svc_chain(changed)]) == 3 and all(sep_chain(changed, ep) in after
                                                       for ep in endpoints(7, 3, offset=100))
    assert not any(sep_chain(changed, ep) in after for ep in endpoints(7))
    assert after["KUBE-SERVICES"] == before["KUBE-SERVICES"]  # same Services, same order
    assert out["resynced"] == after  # a full resync writes the same state
    kinds = [(a["reason"].split(":")[0], a["args"]) for a in out["applies"]]
    assert kinds[2] == ("endpoints scale/svc-7", ["--noflush"])  # start, all endpoints, the change
    assert kinds[3] == ("full resync", [])
    assert out["syncs"] == ["start", "partial", "partial", "full"]


@pytest.mark.netns
@needs_netns
def test_nftables_sync_at_2000_services_is_one_transaction(supervisor: Supervisor) -> None:
    out = sync_scenario(supervisor, "nftables")
    helpers = 8  # 5 base chains, reject-chain, service-endpoints-check, services
    assert out["installed"]["service-ips"] == COUNT
    assert out["installed"]["chains"] == helpers + COUNT * 3
    assert out["installed"]["rules"] == 10 + COUNT * 3
    start, three, many, one = out["applies"]
    assert (three - start, many - three, one - many) == (1, 1, 1)
    assert [s[1:] for s in out["syncs"][2:]] == [[3, 1], [3, 1], [1, 1]]  # (Services, transactions)
    assert out["updated"]["service-ips"] == COUNT
