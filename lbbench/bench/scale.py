"""Scale figures: pods started per second, Endpoints sync of 64 pods, nft apply of 1000 Services, a sweep.

- pods/s: a batch of pods (`lbbench serve pod`) started at once, until every /healthz answers.
- Endpoints sync: time from `update_endpoints` to applied (the forwarder's acknowledgement,
  `nft -f` exiting) for a 64-pod Endpoints list that replaces another 64-pod list entirely.
  The endpoints need no live pods: nothing connects to them while syncing.
- service sweep: first-packet latency and sync time at 10 and 1000 Services, kernel-iptables
  (legacy) against kernel-nftables (lbbench.run.scale); the ratio iptables/nftables of the
  connect p50 per count is the figure (the full sweep: configs/service-scale.toml).
- nft apply: render kube-proxy's nftables layout for 1000 Services with 2 endpoints each,
  then one `nft -f` transaction, only inside lbbench's private namespace.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import Awaitable, Callable
from typing import Any

from lbbench.bench.stats import stat
from lbbench.bench.throughput import l4_plan, skip_reason
from lbbench.cluster.standalone import start_pod
from lbbench.config.scale import ScaleConfig
from lbbench.frontends.registry import frontend_class
from lbbench.model.addresses import HostPort
from lbbench.model.service import Endpoint, ServiceSpec
from lbbench.system.netns import in_private_netns
from lbbench.system.procs import Child, Supervisor

POD_BATCH = 8
SYNC_PODS = 64
NFT_SERVICES = 1000
NFT_ENDPOINTS_PER_SERVICE = 2
SYNC_FRONTENDS = ("userspace-dnat", "kernel-nftables")


def _ip(block: int, i: int) -> str:
    """Distinct loopback addresses per block (no socket is ever bound to them)."""
    return f"127.{block}.{i // 250}.{i % 250 + 1}"


def endpoints(block: int, n: int, port: int = 8080) -> tuple[Endpoint, ...]:
    return tuple(Endpoint(f"pod-{block}-{i}", _ip(block, i), port) for i in range(n))


def services(n: int, block: int = 96) -> list[ServiceSpec]:
    return [ServiceSpec(f"svc-{i:04d}", "bench", "ClusterIP", _ip(block, i), 80, 8080) for i in range(n)]


async def pods_per_second(sup: Supervisor, repeats: int, batch: int = POD_BATCH) -> dict[str, Any]:
    rates: list[float] = []

    def one(i: int, started: list[Child]) -> None:
        child, _ = start_pod(sup, f"scale-{i}", slots=1)
        started.append(child)

    for _ in range(repeats):
        started: list[Child] = []
        t0 = time.perf_counter()
        try:
            await asyncio.gather(*(asyncio.to_thread(one, i, started) for i in range(batch)))
            rates.append(batch / (time.perf_counter() - t0))
        finally:
            await asyncio.gather(*(c.stop(2.0) for c in started))
            for c in started:
                c.close_pipes()
            sup.forget_dead()
    return {"pods_per_s": stat(rates), "batch": batch, "how": "lbbench serve pod x batch, started at once, "
            "until every /healthz answers"}


async def endpoint_sync(sup: Supervisor, name: str, repeats: int, n: int = SYNC_PODS) -> dict[str, Any]:
    """Seconds per full replacement of an n-pod Endpoints list through front end `name`."""
    cls = frontend_class(name)
    assert not isinstance(cls, str)
    plan, spec = l4_plan(HostPort("127.0.0.1", 8080))
    fe = cls(plan, sup)
    took: list[float] = []
    try:
        await fe.start()
        for _ in range(repeats):
            for block in (250, 251):  # A then B: every endpoint changes each time
                t0 = time.perf_counter()
                await fe.update_endpoints(spec.key, endpoints(block, n))
                took.append(time.perf_counter() - t0)
    finally:
        await fe.stop()
    return {"seconds": stat(took), "pods": n}


def _nft_inputs(n: int) -> tuple[list[ServiceSpec], dict[str, tuple[Endpoint, ...]]]:
    svcs = services(n)
    per = NFT_ENDPOINTS_PER_SERVICE
    eps = {s.key: tuple(Endpoint(f"pod-{k}-{j}", _ip(200, k * per + j), 8080) for j in range(per))
           for k, s in enumerate(svcs)}
    return svcs, eps


async def _render_and_apply(applier: Any, n: int) -> tuple[float, float, int]:
    """Render the whole table and apply it as kernel-nftables starts: in batches that fit nft's buffer."""
    from lbbench.frontends.kernel.nftables import FAMILY, TABLE, render_start

    svcs, eps = _nft_inputs(n)
    t0 = time.perf_counter()
    batches = render_start(svcs, eps)
    render = time.perf_counter() - t0
    apply = 0.0
    with contextlib.suppress(RuntimeError):  # a fresh table each round
        await applier.apply(f"delete table {FAMILY} {TABLE}\n", "bench: reset")
    for i, text in enumerate(batches):
        apply += await applier.apply(text, f"bench: {n} services, batch {i + 1}/{len(batches)}")
    return render, apply, sum(len(t) for t in batches)


async def nft_apply(sup: Supervisor, repeats: int, n: int = NFT_SERVICES) -> dict[str, Any]:
    """Render + `nft -f` of the whole ruleset for n Services (inside the private namespace only).

    If the transaction is too big for nft's netlink buffer (nft cannot raise it inside an
    unprivileged user namespace), the count is halved until one applies; the figure then
    says so (`services` < `requested_services`, with the refusal in `refused`).
    """
    from lbbench.frontends.kernel.applier import RulesApplier
    from lbbench.frontends.kernel.nftables import FAMILY, TABLE

    applier = RulesApplier(sup, None, "nft", ["-f"], ".nft", "nft")
    render_s: list[float] = []
    apply_s: list[float] = []
    refused: list[str] = []
    count, size = n, 0
    try:
        while not render_s:
            try:
                render, apply, size = await _render_and_apply(applier, count)
            except RuntimeError as e:
                if "Message too long" not in str(e) or count < 50:
                    raise
                refused.append(f"{count} services: {str(e).strip().splitlines()[-1][-90:]}")
                count //= 2
                continue
            render_s.append(render)
            apply_s.append(apply)
        for _ in range(repeats - 1):
            render, apply, size = await _render_and_apply(applier, count)
            render_s.append(render)
            apply_s.append(apply)
    finally:
        with contextlib.suppress(RuntimeError):
            await applier.apply(f"delete table {FAMILY} {TABLE}\n", "bench: cleanup")
        applier.close()
    total = [a + b for a, b in zip(render_s, apply_s, strict=True)]
    return {"seconds": stat(total), "render_s": stat(render_s), "apply_s": stat(apply_s), "services": count,
            "requested_services": n, "endpoints_per_service": NFT_ENDPOINTS_PER_SERVICE, "ruleset_bytes": size,
            "refused": refused}


SWEEP = ScaleConfig(services=(10, 1000), endpoints_per_service=2, under_test=3, connections=600, rate_rps=400.0,
                    endpoint_changes=3, full_resyncs=1, iptables_backends=("legacy",))
SWEEP_FRONTENDS = ("kernel-iptables", "kernel-nftables")


async def service_sweep(sup: Supervisor, log: Callable[[str], None]) -> dict[str, Any]:
    """A short Service-count sweep (lbbench.run.scale) and its iptables/nftables ratios, count by count.

    The full sweep is `lbbench run configs/service-scale.toml`; this one keeps to two counts.
    """
    from lbbench.run.scale import run_sweep

    pods = [start_pod(sup, f"sweep-{i}", slots=8, ready_timeout_s=60.0) for i in range(SWEEP.endpoints_per_service)]
    section, _ = await run_sweep(SWEEP, 1, SWEEP_FRONTENDS, sup, [addr for _, addr in pods], log)
    for child, _ in pods:
        await child.stop(2.0)
    cells = section["frontends"]
    ipt, nft = cells.get("kernel-iptables-legacy", {}).get("counts", {}), cells.get("kernel-nftables", {}).get(
        "counts", {})
    ratios = {}
    for count in sorted(set(ipt) & set(nft), key=int):
        a, b = ipt[count]["pooled"]["connect_us"]["p50"], nft[count]["pooled"]["connect_us"]["p50"]
        ratios[count] = round(a / b, 3) if a and b else None
    took = [e["sync"]["endpoint_change"]["p50_ms"] / 1e3 for fe in cells.values() for e in fe["counts"].values()]
    return {"seconds": stat(took), "connect_p50_iptables_vs_nftables": ratios, "sweep": section}


def nft_skip_reason() -> str | None:
    from lbbench.system.netns import find_tool

    if find_tool("nft") is None:
        return "nft not installed (apt-get install nftables)"
    if not in_private_netns():
        return skip_reason("kernel-nftables") or "needs lbbench's private network namespace"
    return None


async def run_scale(sup: Supervisor, repeats: int, log: Callable[[str], None]) -> tuple[dict[str, Any],
                                                                                      dict[str, str]]:
    """All scale figures; returns (figures, skipped-with-reason)."""
    figures: dict[str, Any] = {}
    skipped: dict[str, str] = {}

    async def attempt(key: str, make: Callable[[], Awaitable[dict[str, Any]]]) -> None:
        try:
            figures[key] = await make()
            log(f"scale: {key}: median {figures[key][_main(key)]['median']:.4g}")
        except Exception as e:  # one figure failing must not lose the others
            skipped[key] = f"failed: {type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
            log(f"scale: {key} skipped: {skipped[key]}")

    await attempt("pod_start", lambda: pods_per_second(sup, repeats))
    for name in SYNC_FRONTENDS:
        key = f"endpoint_sync_{SYNC_PODS}_pods/{name}"
        if (why := skip_reason(name)) is not None:
            skipped[key] = why
            continue
        await attempt(key, functools.partial(endpoint_sync, sup, name, repeats))
    key = "service_sweep"
    if (why := nft_skip_reason()) is not None:
        skipped[key] = why
    else:
        await attempt(key, lambda: service_sweep(sup, log))
    key = f"nft_apply_{NFT_SERVICES}_services"
    if (why := nft_skip_reason()) is not None:
        skipped[key] = why
    else:
        await attempt(key, lambda: nft_apply(sup, repeats))
    return figures, skipped


def _main(key: str) -> str:
    return "pods_per_s" if key == "pod_start" else "seconds"
