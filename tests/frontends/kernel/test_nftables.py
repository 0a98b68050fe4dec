"""kernel-nftables: kube-proxy's nftables layout, applied by the real kernel in a private namespace.

The kernel scenarios run inside ``unshare --user --map-root-user --net`` (through
``netns_argv``) and print JSON; these tests assert on it. They are skipped only when
``netns_unavailable_reason()`` says so (CI has user namespaces and nftables).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from helpers.paths import L4_SCENARIOS, TESTS
from helpers.uniform import assert_uniform

from lbbench.errors import UserError
from lbbench.frontends.base import FrontendPlan
from lbbench.frontends.kernel.nftables import (
    COMMANDS_TEXT_MAX,
    KernelNftables,
    endpoint_chain,
    render_full_apply,
    render_ruleset,
    render_start,
    render_update,
    service_chain,
)
from lbbench.model.service import Endpoint, ServiceSpec
from lbbench.system.netns import netns_argv, netns_unavailable_reason
from lbbench.system.procs import Supervisor

HERE = Path(__file__).parent
GOLDEN = TESTS / "golden" / "nftables_3x4.nft"
SCENARIOS = L4_SCENARIOS
FRONTEND = "kernel-nftables"

needs_netns = pytest.mark.skipif(netns_unavailable_reason() is not None,
                                 reason=f"no private user+net namespace with nft: {netns_unavailable_reason()}")


def golden_services() -> tuple[list[ServiceSpec], dict[str, list[Endpoint]]]:
    services = [
        ServiceSpec("web", "default", "ClusterIP", "127.96.0.10", 80, 8080),
        ServiceSpec("cart", "shop", "NodePort", "127.96.0.11", 80, 8080, node_port=30080,
                    node_ips=("127.97.0.1", "127.97.0.2")),
        ServiceSpec("front", "shop", "LoadBalancer", "127.96.0.12", 443, 8443, node_port=30443,
                    node_ips=("127.97.0.1", "127.97.0.2"), lb_ip="127.99.0.1"),
    ]
    endpoints = {
        s.key: [Endpoint(f"{s.name}-{i}", f"127.100.{k}.{i + 1}", s.target_port, f"node-{i % 2}") for i in range(4)]
        for k, s in enumerate(services)
    }
    return services, endpoints


def run_in_netns(sup: Supervisor, argv: list[str], timeout_s: float = 90) -> subprocess.CompletedProcess[str]:
    child = sup.spawn("netns", netns_argv(argv), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                      stderr=subprocess.PIPE)
    out, err = child.popen.communicate(timeout=timeout_s)
    return subprocess.CompletedProcess(argv, child.popen.returncode, out.decode(), err.decode())


def scenario(sup: Supervisor, name: str) -> dict[str, Any]:
    r = run_in_netns(sup, [sys.executable, str(SCENARIOS), name, FRONTEND])
    assert r.returncode == 0, r.stderr[-3000:]
    result: dict[str, Any] = json.loads(r.stdout)
    return result


# ---------------------------------------------------------------------------------------
# Rendering (pure)


def test_chain_names_follow_kube_proxy() -> None:
    # kube-proxy's own examples (pkg/proxy/nftables): the same hash scheme gives the same names
    spec = ServiceSpec("svc1", "ns1", "ClusterIP", "127.0.0.10", 80, 80)
    assert service_chain(spec) == "service-ULMVA6XW-ns1/svc1/tcp/p80"
    assert endpoint_chain(spec, Endpoint("p", "10.180.0.1", 80)) == "endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80"


def test_ruleset_matches_golden() -> None:
    services, endpoints = golden_services()
    text = render_ruleset(services, endpoints)
    if os.environ.get("LBBENCH_UPDATE_GOLDEN"):
        GOLDEN.write_text(text)
    assert text == GOLDEN.read_text()
    assert "numgen random mod 4 vmap" in text
    assert "127.99.0.1" not in text  # the LB IP is the cloud balancer's, not in service-ips


def test_empty_service_goes_to_reject_not_to_nat() -> None:
    services, endpoints = golden_services()
    endpoints["shop/cart"] = []
    text = render_ruleset(services, endpoints)
    assert '127.96.0.11 . tcp . 80 comment "shop/cart:p80" : goto reject-chain' in text
    assert 'tcp . 30080 comment "shop/cart:p80" : goto reject-chain' in text
    assert service_chain(services[1]) not in text


def test_names_must_be_dns_labels() -> None:
    bad = ServiceSpec("Web_1", "default", "ClusterIP", "127.96.0.10", 80, 8080)
    with pytest.raises(ValueError, match="DNS label"):
        render_ruleset([bad], {})


def many_services(n: int, per: int) -> tuple[list[ServiceSpec], dict[str, list[Endpoint]]]:
    """n Services (every 4th a NodePort on two nodes), `per` endpoints each."""
    def ip(block: int, i: int) -> str:
        return f"127.{block}.{i // 250}.{i % 250 + 1}"

    services = [ServiceSpec(f"svc-{i:04d}", "bench", "NodePort" if i % 4 == 0 else "ClusterIP", ip(96, i), 80, 8080,
                            node_port=30000 + i if i % 4 == 0 else None,
                            node_ips=("127.97.0.1", "127.97.0.2") if i % 4 == 0 else ())
                for i in range(n)]
    endpoints = {s.key: [Endpoint(f"p{j}", ip(100 + j, i), 8080) for j in range(per)] for i, s in enumerate(services)}
    return services, endpoints


def _port_name(spec: ServiceSpec) -> str:
    return f"{spec.namespace}/{spec.name}/tcp/p{spec.port}"


def test_small_start_is_one_transaction_in_block_form() -> None:
    services, endpoints = golden_services()
    assert render_start(services, endpoints) == [render_full_apply(services, endpoints)]


def test_large_start_is_split_and_never_splits_a_service() -> None:
    services, endpoints = many_services(1000, 2)
    texts = render_start(services, endpoints)
    assert len(texts) > 5
    assert all(len(t) <= COMMANDS_TEXT_MAX for t in texts)
    skeleton = texts[0]  # the table, its base and helper chains, empty maps: no Service yet
    assert skeleton.startswith("add table ip lbbench\ndelete table ip lbbench\n")
    assert "chain nat-output" in skeleton and "map service-ips" in skeleton and "elements" not in skeleton
    assert "add element ip lbbench nodeport-ips { 127.97.0.1, 127.97.0.2 }" in texts[1]
    for spec in services:  # its chains, its rules and its map entries land in one transaction
        assert sum(_port_name(spec) in t for t in texts) == 1, spec.key


def test_an_update_touches_only_its_own_service() -> None:
    services, endpoints = golden_services()
    web, cart = services[0], services[1]
    [text] = render_update(cart, endpoints[cart.key], endpoints[cart.key][:2])
    assert "flush map" not in text and _port_name(web) not in text
    assert "numgen random mod 2 vmap" in text
    assert text.count("delete chain") == 2  # the two endpoints that left
    # the vmap points at the remaining chains; the entries stay where they were
    [emptied] = render_update(cart, endpoints[cart.key], [])
    lines = emptied.splitlines()
    delete_entry = lines.index("delete element ip lbbench service-ips { 127.96.0.11 . tcp . 80 }")
    assert delete_entry < lines.index(f"delete chain ip lbbench {service_chain(cart)}")
    assert any(line.startswith("add element ip lbbench no-endpoint-services") for line in lines)


def test_a_huge_update_keeps_its_switch_in_one_transaction() -> None:
    services, endpoints = golden_services()
    web = services[0]
    huge = [Endpoint(f"p{i}", f"127.150.{i // 250}.{i % 250 + 1}", 8080) for i in range(1200)]
    up = render_update(web, endpoints[web.key], huge)
    assert len(up) > 2
    [switch] = [i for i, t in enumerate(up) if "numgen" in t]
    assert "numgen random mod 1200 vmap" in up[switch]
    assert all("add rule" in t and "dnat to" in t for t in up[:switch])  # the new chains exist first
    assert all("delete chain" in t and "numgen" not in t for t in up[switch + 1:])  # stale ones go last
    down = render_update(web, huge, endpoints[web.key][:1])
    [switch] = [i for i, t in enumerate(down) if "numgen" in t]
    assert "dnat to 127.100.0.1:8080" in down[switch]  # the one new chain, with the switch
    assert len(down) > 1 and all("delete chain" in t for t in down[switch + 1:])


def test_start_refuses_outside_the_private_namespace() -> None:
    """Never the host's netfilter: refused before any nft runs."""
    spec = ServiceSpec("web", "default", "ClusterIP", "127.96.0.10", 80, 8080)

    async def attempt(in_netns: bool) -> None:
        sup = Supervisor()
        try:
            await KernelNftables(FrontendPlan((spec,), in_netns=in_netns), sup).start()
        finally:
            await sup.aclose()

    for claimed in (False, True):  # claiming in_netns is not enough without the real namespace
        with pytest.raises(UserError, match="private network namespace"):
            asyncio.run(attempt(claimed))


# ---------------------------------------------------------------------------------------
# nft itself


@pytest.mark.netns
@needs_netns
def test_golden_and_update_transactions_accepted_by_nft(supervisor: Supervisor, tmp_path: Path) -> None:
    services, endpoints = golden_services()
    [two] = render_update(services[0], endpoints["default/web"], endpoints["default/web"][:2])
    [none] = render_update(services[2], endpoints["shop/front"], [])
    (tmp_path / "full.nft").write_text(render_full_apply(services, endpoints))
    (tmp_path / "two.nft").write_text(two)
    (tmp_path / "none.nft").write_text(none)
    script = (f"nft -c -f {GOLDEN} && nft -f {tmp_path}/full.nft && nft -f {tmp_path}/two.nft && "
              f"nft -f {tmp_path}/none.nft && nft list table ip lbbench")
    r = run_in_netns(supervisor, ["sh", "-c", script])
    assert r.returncode == 0, r.stderr
    listed = r.stdout
    assert "numgen random mod 2 vmap" in listed  # default/web now has two endpoints
    assert "127.100.0.3" not in listed  # its stale endpoint chains are gone
    assert service_chain(services[2]) not in listed  # shop/front: no endpoints, no NAT chain
    assert "30443" in listed and "reject-chain" in listed


@pytest.mark.netns
@needs_netns
def test_nft_check_rejects_a_broken_ruleset(supervisor: Supervisor, tmp_path: Path) -> None:
    """The golden check above can fail: nft -c does refuse bad input."""
    services, endpoints = golden_services()
    broken = render_ruleset(services, endpoints).replace("numgen random mod 4", "numgen random mod four", 1)
    (tmp_path / "broken.nft").write_text(broken)
    assert run_in_netns(supervisor, ["nft", "-c", "-f", str(tmp_path / "broken.nft")]).returncode != 0


# ---------------------------------------------------------------------------------------
# The kernel balancing real connections


@pytest.mark.netns
@pytest.mark.slow
@needs_netns
def test_kernel_uniform_random_and_keepalive_sticks(supervisor: Supervisor) -> None:
    r = scenario(supervisor, "uniformity")
    counts = r["new"]["served"]
    assert r["new"]["errors"] == {}
    assert sorted(counts) == ["pod-0", "pod-1", "pod-2", "pod-3"]
    assert sum(counts.values()) == 2000
    assert_uniform(counts)
    assert r["keepalive_errors"] == 0 and len(r["keepalive"]) == 200
    assert all(len(set(pods)) == 1 and len(pods) == 2 for pods in r["keepalive"])
    assert len({pods[0] for pods in r["keepalive"]}) == 4
    assert r["counters"]["nft_applies_total"] == 2  # start + one Endpoints sync


@pytest.mark.netns
@pytest.mark.slow
@needs_netns
def test_kernel_dead_endpoint_fails_until_sync_then_never(supervisor: Supervisor) -> None:
    r = scenario(supervisor, "dead_endpoint")
    flight, before, after = r["in_flight"], r["before_sync"], r["after_sync"]
    assert "pod-0" not in flight["served"]
    assert sum(flight["errors"].values()) >= 1
    assert sum(flight["served"].values()) + sum(flight["errors"].values()) == 40
    failed = sum(before["errors"].values())
    assert set(before["errors"]) <= {"refused", "reset"}  # the dead pod IP answers the SYN with RST
    assert 0.12 < failed / 400 < 0.40
    assert "pod-0" not in before["served"]
    assert after["errors"] == {}
    assert sorted(after["served"]) == ["pod-1", "pod-2", "pod-3"]


@pytest.mark.netns
@needs_netns
def test_kernel_conntrack_keeps_established_connection(supervisor: Supervisor) -> None:
    r = scenario(supervisor, "conntrack")
    sticky = r["sticky"]
    assert len(sticky) == 3 and len(set(sticky)) == 1
    assert sticky[0] not in r["after"]["served"]
    assert r["after"]["errors"] == {}


@pytest.mark.netns
@needs_netns
def test_kernel_service_types_and_lb_hop(supervisor: Supervisor) -> None:
    r = scenario(supervisor, "service_types")
    assert len(r["NodePort"]) == 2
    for res in [r["ClusterIP"], *r["NodePort"].values(), r["LoadBalancer"]]:
        assert res["errors"] == {}
        assert len(res["served"]) >= 2
    assert r["counters"]["lb_connections_total"] == 80  # the cloud-LB hop, then the kernel's NodePort DNAT


@pytest.mark.netns
@needs_netns
def test_kernel_rules_act_reject_then_dnat(supervisor: Supervisor) -> None:
    """A listener on the ClusterIP itself: the rules must keep every connection away from it."""
    r = scenario(supervisor, "reject_trap")
    assert r["hits_before_rules"] == 5  # without rules the trap does answer
    assert r["empty"]["errors"] == {"refused": 20}  # kube-proxy's reject for a Service without endpoints
    assert r["full"]["served"] == {"pod-0": 20}
    assert r["trap_hits_with_rules"] == 0


@pytest.mark.netns
@needs_netns
def test_every_apply_is_saved_with_its_time(supervisor: Supervisor, tmp_path: Path) -> None:
    code = f"""
import asyncio, json
from pathlib import Path
from lbbench.frontends.base import FrontendPlan
from lbbench.model.service import Endpoint, ServiceSpec
from lbbench.frontends.kernel.nftables import KernelNftables
from lbbench.system.procs import Supervisor

async def main():
    sup = Supervisor()
    spec = ServiceSpec("web", "default", "ClusterIP", "127.96.0.10", 80, 8080)
    fe = KernelNftables(FrontendPlan((spec,), in_netns=True, artifacts_dir=Path({str(tmp_path)!r})), sup)
    await fe.start()
    await fe.update_endpoints(spec.key, (Endpoint("a", "127.100.0.1", 8080), Endpoint("b", "127.100.0.2", 8080)))
    await fe.update_endpoints(spec.key, ())
    counters = await fe.counters()
    await fe.stop()
    await sup.aclose()
    print(json.dumps(counters))

asyncio.run(main())
"""
    r = run_in_netns(supervisor, [sys.executable, "-c", code])
    assert r.returncode == 0, r.stderr
    counters = json.loads(r.stdout)
    assert counters["nft_applies_total"] == 3
    assert counters["nft_apply_max_ms"] > 0
    folder = tmp_path / "nftables"
    applies = [json.loads(line) for line in (folder / "applies.jsonl").read_text().splitlines()]
    assert [a["seq"] for a in applies] == [1, 2, 3, 4]  # start, two syncs, stop
    assert all(a["exit_status"] == 0 and a["apply_ms"] > 0 and a["applied_unix_s"] > 0 for a in applies)
    assert "numgen random mod 2" in (folder / "0002.nft").read_text()
    assert "goto reject-chain" in (folder / "0003.nft").read_text()


_SCALE_CODE = """
import asyncio, json, subprocess, sys
sys.path[:0] = [{tests!r}, {root!r}]
from test_nftables import many_services
from lbbench.frontends.base import FrontendPlan
from lbbench.frontends.kernel.applier import RulesApplier
from lbbench.frontends.kernel.nftables import KernelNftables, render_start, render_update
from lbbench.system.procs import Supervisor

def listing():
    out = subprocess.run(["nft", "-j", "list", "table", "ip", "lbbench"], capture_output=True, text=True, check=True)
    objs = json.loads(out.stdout)["nftables"]
    maps = {{o["map"]["name"]: len(o["map"].get("elem", [])) for o in objs if "map" in o}}
    return {{"chains": sum("chain" in o for o in objs), "rules": sum("rule" in o for o in objs), **maps}}

async def main():
    sup = Supervisor()
    services, endpoints = many_services(1000, 2)
    out = {{}}
    fe = KernelNftables(FrontendPlan(tuple(services), in_netns=True), sup)  # starts with no endpoints
    await fe.start()
    await fe.update_endpoints(services[1].key, tuple(endpoints[services[1].key]))
    out["frontend"] = {{**listing(), **(await fe.counters())}}
    await fe.stop()
    applier = RulesApplier(sup, None, "nft", ["-f"], ".nft", "nft")
    texts = render_start(services, endpoints)
    for text in texts:
        await applier.apply(text, "1000 x 2")
    out["full"] = {{**listing(), "transactions": len(texts)}}
    # on top of that, one Service loses its endpoints and another gets a third one (small updates)
    s0, s1 = services[0], services[1]
    three = many_services(2, 3)[1][s1.key]
    for text in render_update(s0, endpoints[s0.key], []) + render_update(s1, endpoints[s1.key], three):
        await applier.apply(text, "update")
    out["updated"] = listing()
    applier.close()
    await sup.aclose()
    print(json.dumps(out))

asyncio.run(main())
"""


@pytest.mark.netns
@needs_netns
def test_1000_services_apply_inside_the_namespace(supervisor: Supervisor) -> None:
    """More than nft's netlink buffer takes in one transaction inside a user namespace (~130 Services)."""
    r = run_in_netns(supervisor, [sys.executable, "-c", _SCALE_CODE.format(tests=str(HERE), root=str(TESTS))])
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout)
    helpers = 8  # 5 base chains, reject-chain, service-endpoints-check, services
    fe = out["frontend"]
    assert fe["nft_applies_total"] > 2  # the start took several transactions, the update one
    assert fe["no-endpoint-services"] == 999 and fe["no-endpoint-nodeports"] == 250  # svc-0001 is a ClusterIP
    assert fe["service-ips"] == 1 and fe["chains"] == helpers + 1 + 2
    full = out["full"]
    assert full["transactions"] > 5
    assert full["service-ips"] == 1000 and full["service-nodeports"] == 250
    assert full["no-endpoint-services"] == 0 and full["no-endpoint-nodeports"] == 0
    assert full["chains"] == helpers + 1000 * 3
    assert full["rules"] == 10 + 1000 * 3  # 5 base chains, 2 + 2 lookups, 1 reject; a vmap + 2 dnat each
    updated = out["updated"]
    assert updated["service-ips"] == 999 and updated["no-endpoint-services"] == 1
    assert updated["service-nodeports"] == 249 and updated["no-endpoint-nodeports"] == 1  # svc-0000 is a NodePort
    assert updated["chains"] == helpers + 1000 * 3 - 3 + 1
