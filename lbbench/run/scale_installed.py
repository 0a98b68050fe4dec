"""What a DNAT data plane holds, read back from the kernel (or the forwarder's plan), next to what it should.

- kernel-iptables: ``iptables-save -t nat`` of the same backend: rules in ``KUBE-SERVICES``
  (one per Service), in ``KUBE-SVC-*`` and ``KUBE-SEP-*`` chains (one per endpoint each);
- kernel-nftables: ``nft -j list table ip lbbench``: chains, rules, ``service-ips`` elements;
- userspace-dnat: one listener per Service (from its plan: nothing to read back).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
from typing import Any

from lbbench.frontends.base import Frontend
from lbbench.frontends.kernel.frontend import KernelFrontend
from lbbench.run.scale_layout import ScaleLayout

NFT_HELPER_CHAINS = 8  # 5 base chains, reject-chain, service-endpoints-check, services
NFT_HELPER_RULES = 10  # 5 base-chain rules, 2 + 2 lookups, 1 reject


def slab_kib() -> int | None:
    """The host's Slab memory (kernel objects, rules included), or None where it cannot be read."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("Slab:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _run(argv: list[str]) -> str:
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, check=True).stdout


def iptables_counts(save_tool: str) -> dict[str, int]:
    out = _run([save_tool, "-t", "nat"])
    rules = [line.split()[1] for line in out.splitlines() if line.startswith("-A ")]
    return {"rules": len(rules), "chains": sum(line.startswith(":") for line in out.splitlines()),
            "kube_services_rules": sum(c == "KUBE-SERVICES" for c in rules),
            "svc_rules": sum(c.startswith("KUBE-SVC-") for c in rules),
            "sep_rules": sum(c.startswith("KUBE-SEP-") for c in rules)}


def nft_counts() -> dict[str, int]:
    objs = json.loads(_run(["nft", "-j", "list", "table", "ip", "lbbench"]))["nftables"]
    maps = {o["map"]["name"]: len(o["map"].get("elem", [])) for o in objs if "map" in o}
    return {"rules": sum("rule" in o for o in objs), "chains": sum("chain" in o for o in objs),
            "service_ips_elements": maps.get("service-ips", 0)}


def expected_counts(frontend: str, layout: ScaleLayout) -> dict[str, int]:
    n, eps = len(layout.services), layout.endpoint_count
    if frontend == "kernel-iptables":
        return {"kube_services_rules": n, "svc_rules": eps, "sep_rules": eps}
    if frontend == "kernel-nftables":
        return {"service_ips_elements": n, "chains": NFT_HELPER_CHAINS + n + eps, "rules": NFT_HELPER_RULES + n + eps}
    return {"listeners": n}


async def installed(fe: Frontend, layout: ScaleLayout) -> dict[str, Any]:
    """{"found": ..., "expected": ..., "match": bool} for `fe` holding `layout`."""
    found: dict[str, int]
    if fe.name == "kernel-iptables" and isinstance(fe, KernelFrontend) and fe.applier is not None:
        save = fe.applier.argv[0].removesuffix("-restore") + "-save"
        found = await asyncio.to_thread(iptables_counts, save)
    elif fe.name == "kernel-nftables":
        found = await asyncio.to_thread(nft_counts)
    else:
        found = {"listeners": len(layout.services)}
    expected = expected_counts(fe.name, layout)
    return {"found": found, "expected": expected, "match": all(found.get(k) == v for k, v in expected.items())}
