"""Kernel front ends at 2000 Services, run inside lbbench's private namespace; prints JSON.

    python tests/helpers/kernel_sync_scenarios.py iptables legacy|nft|auto [COUNT]
    python tests/helpers/kernel_sync_scenarios.py nftables
    python tests/helpers/kernel_sync_scenarios.py positions

Fake endpoints (nothing connects): the kernel's own listing is what the tests assert on.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from lbbench.frontends.base import FrontendPlan
from lbbench.frontends.kernel.iptables import KernelIptables
from lbbench.frontends.kernel.nftables import KernelNftables
from lbbench.model.service import Endpoint, ServiceSpec
from lbbench.system.procs import Supervisor

COUNT = 2000


def services(n: int = COUNT) -> list[ServiceSpec]:
    return [ServiceSpec(f"svc-{i}", "scale", "ClusterIP", f"127.32.{i // 250}.{i % 250 + 1}", 80, 8080)
            for i in range(n)]


def endpoints(i: int, per: int = 2, offset: int = 0) -> tuple[Endpoint, ...]:
    return tuple(Endpoint(f"p-{i}-{j}", f"127.64.{(i * per + j) // 250}.{(i * per + j) % 250 + 1 + offset}", 8080)
                 for j in range(per))


def iptables_save(tool: str) -> dict[str, list[str]]:
    """nat rules per chain, in order, from the kernel."""
    out = subprocess.run([tool, "-t", "nat"], capture_output=True, text=True, check=True).stdout
    chains: dict[str, list[str]] = {}
    for line in out.splitlines():
        if line.startswith(":"):
            chains.setdefault(line[1:].split()[0], [])
        elif line.startswith("-A "):
            chains.setdefault(line.split()[1], []).append(line)
    return chains


async def iptables(backend: str, count: int) -> dict[str, Any]:
    sup = Supervisor()
    svcs = services(count)
    artifacts = Path(tempfile.mkdtemp(prefix="lbbench-sync-"))
    fe = KernelIptables(FrontendPlan(tuple(svcs), in_netns=True, artifacts_dir=artifacts), sup,
                        backend=backend)  # type: ignore[arg-type]
    save = {"legacy": "iptables-legacy-save", "nft": "iptables-nft-save", "auto": "iptables-save"}[backend]
    await fe.start()
    await fe.update_many({s.key: endpoints(i) for i, s in enumerate(svcs)})
    before = iptables_save(save)
    changed = svcs[7]
    await fe.update_endpoints(changed.key, endpoints(7, 3, offset=100))
    after = iptables_save(save)
    last = sorted((artifacts / "iptables").glob("*.rules"))[-1].read_text()
    await fe.full_resync()
    resynced = iptables_save(save)
    counters = await fe.counters()
    syncs = [s.kind for s in fe.syncs]
    label = fe.backend_label
    await fe.stop()
    await sup.aclose()
    applies = (artifacts / "iptables" / "applies.jsonl").read_text().splitlines()
    return {"before": before, "after": after, "resynced": resynced, "last_restore": last, "counters": counters,
            "syncs": syncs, "backend": label, "applies": [json.loads(line) for line in applies]}


def nft_listing() -> dict[str, Any]:
    out = subprocess.run(["nft", "-j", "list", "table", "ip", "lbbench"], capture_output=True, text=True, check=True)
    objs = json.loads(out.stdout)["nftables"]
    maps = {o["map"]["name"]: len(o["map"].get("elem", [])) for o in objs if "map" in o}
    return {"chains": sum("chain" in o for o in objs), "rules": sum("rule" in o for o in objs), **maps}


async def nftables() -> dict[str, Any]:
    sup = Supervisor()
    svcs = services()
    fe = KernelNftables(FrontendPlan(tuple(svcs), in_netns=True), sup)
    await fe.start()
    await fe.update_many({s.key: endpoints(i) for i, s in enumerate(svcs)})
    installed = nft_listing()
    applies = (await fe.counters())["nft_applies_total"]
    # three Services change at once, as within one sync period: one transaction
    await asyncio.gather(*(fe.update_endpoints(svcs[i].key, endpoints(i, 3, offset=100)) for i in (3, 5, 9)))
    after_three = (await fe.counters())["nft_applies_total"]
    await fe.update_many({svcs[i].key: endpoints(i, 1, offset=100) for i in (3, 5, 9)})
    after_many = (await fe.counters())["nft_applies_total"]
    await fe.update_endpoints(svcs[11].key, endpoints(11, 1, offset=100))
    after_one = (await fe.counters())["nft_applies_total"]
    updated = nft_listing()
    syncs = [(s.kind, s.services, s.transactions) for s in fe.syncs]
    await fe.stop()
    await sup.aclose()
    return {"installed": installed, "updated": updated, "applies": [applies, after_three, after_many, after_one],
            "syncs": syncs}




async def positions() -> dict[str, Any]:
    """The sweep's layout at 2000 Services in kernel-iptables: where each Service under test's rule sits."""
    from lbbench.model.addresses import HostPort
    from lbbench.run.scale_layout import build_layout

    sup = Supervisor()
    layout = build_layout(COUNT, 2, 5, 7, [HostPort("127.200.0.1", 8080), HostPort("127.200.0.2", 8080)])
    fe = KernelIptables(FrontendPlan(layout.services, in_netns=True), sup, backend="legacy")
    await fe.start()
    await fe.update_many(layout.endpoints)
    rules = iptables_save("iptables-legacy-save")["KUBE-SERVICES"]
    await fe.stop()
    await sup.aclose()
    by_ip = {rule.split()[3].removesuffix("/32"): i for i, rule in enumerate(rules)}
    return {"layout": layout.positions,
            "kernel": {key: by_ip[layout.services[pos].cluster_ip] for key, pos in layout.positions.items()}}


if __name__ == "__main__":
    which = sys.argv[1]
    count = int(sys.argv[3]) if len(sys.argv) > 3 else COUNT
    runs = {"iptables": lambda: iptables(sys.argv[2], count), "nftables": nftables, "positions": positions}
    print(json.dumps(asyncio.run(runs[which]())))
