"""kernel-iptables: kube-proxy's iptables-mode cascade, applied by the kernel in a private namespace."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
from helpers.paths import L4_SCENARIOS
from helpers.uniform import assert_uniform
from test_nftables import golden_services, run_in_netns

from lbbench.frontends.kernel.iptables import render_iptables, sep_chain, svc_chain
from lbbench.system.netns import find_tool, netns_unavailable_reason
from lbbench.system.procs import Supervisor

SCENARIOS = L4_SCENARIOS
FRONTEND = "kernel-iptables"

pytestmark = pytest.mark.skipif(
    netns_unavailable_reason() is not None or find_tool("iptables-restore") is None,
    reason=f"needs a private user+net namespace and iptables-restore: {netns_unavailable_reason()}",
)


def scenario(sup: Supervisor, name: str) -> dict[str, Any]:
    r = run_in_netns(sup, [sys.executable, str(SCENARIOS), name, FRONTEND])
    assert r.returncode == 0, r.stderr[-3000:]
    result: dict[str, Any] = json.loads(r.stdout)
    return result


def test_cascade_probabilities_give_each_endpoint_one_in_n() -> None:
    services, endpoints = golden_services()
    text = render_iptables(services, endpoints)
    web = services[0]
    rules = [line for line in text.splitlines() if line.startswith(f"-A {svc_chain(web)} ")]
    assert len(rules) == 4
    probabilities = [0.25, 1 / 3, 0.5]
    for rule, p in zip(rules, probabilities, strict=False):
        assert f"--probability {p:0.10f}" in rule
    assert "statistic" not in rules[-1]  # the last one takes whatever is left
    assert rules[0].endswith(sep_chain(web, endpoints[web.key][0]))
    # 1/4, then 3/4 * 1/3, then 3/4 * 2/3 * 1/2, then the rest: 1/4 each
    left, shares = 1.0, []
    for p in [*probabilities, 1.0]:
        shares.append(left * p)
        left -= left * p
    assert shares == pytest.approx([0.25] * 4)


@pytest.mark.netns
def test_rules_accepted_by_iptables_restore(supervisor: Supervisor, tmp_path: Path) -> None:
    services, endpoints = golden_services()
    endpoints["shop/cart"] = []
    rules = tmp_path / "rules"
    rules.write_text(render_iptables(services, endpoints))
    r = run_in_netns(supervisor, ["sh", "-c", f"iptables-restore --test {rules} && iptables-restore {rules} && "
                                  "iptables-save -t nat && iptables-save -t filter"])
    assert r.returncode == 0, r.stderr
    assert "--to-destination 127.100.0.4:8080" in r.stdout
    assert '"shop/cart:p80 has no endpoints"' in r.stdout and "REJECT" in r.stdout


@pytest.mark.netns
@pytest.mark.slow
def test_kernel_iptables_uniform_and_keepalive_sticks(supervisor: Supervisor) -> None:
    r = scenario(supervisor, "uniformity")
    counts = r["new"]["served"]
    assert r["new"]["errors"] == {}
    assert sorted(counts) == ["pod-0", "pod-1", "pod-2", "pod-3"]
    assert_uniform(counts)
    assert all(len(set(pods)) == 1 for pods in r["keepalive"]) and len(r["keepalive"]) == 200
    assert r["counters"]["iptables_applies_total"] == 2


@pytest.mark.netns
@pytest.mark.slow
def test_kernel_iptables_dead_endpoint_until_sync(supervisor: Supervisor) -> None:
    r = scenario(supervisor, "dead_endpoint")
    before, after = r["before_sync"], r["after_sync"]
    assert sum(r["in_flight"]["errors"].values()) >= 1 and "pod-0" not in r["in_flight"]["served"]
    assert set(before["errors"]) <= {"refused", "reset"}
    assert 0.12 < sum(before["errors"].values()) / 400 < 0.40
    assert after["errors"] == {} and sorted(after["served"]) == ["pod-1", "pod-2", "pod-3"]


@pytest.mark.netns
def test_kernel_iptables_rules_act_reject_then_dnat(supervisor: Supervisor) -> None:
    r = scenario(supervisor, "reject_trap")
    assert r["hits_before_rules"] == 5
    assert r["empty"]["errors"] == {"refused": 20}
    assert r["full"]["served"] == {"pod-0": 20}
    assert r["trap_hits_with_rules"] == 0


@pytest.mark.netns
def test_kernel_iptables_service_types(supervisor: Supervisor) -> None:
    r = scenario(supervisor, "service_types")
    for res in [r["ClusterIP"], *r["NodePort"].values(), r["LoadBalancer"]]:
        assert res["errors"] == {} and len(res["served"]) >= 2
    assert r["counters"]["lb_connections_total"] == 80

