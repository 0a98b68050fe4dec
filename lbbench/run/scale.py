"""The Service-count sweep (``[scale]``): how each DNAT data plane's cost grows with the Services it holds.

For each front end and each count N: install N Services (a few under test, served by real pods,
at seeded random positions; the rest with fake endpoints), check what the kernel holds, then
- first-packet latency: new connections to the Services under test, open loop (scale_probe);
- sync cost: one Service's endpoints changed (a partial sync), `endpoint_changes` times, and
  `full_resyncs` full resyncs (every Service rewritten), each with its time and CPU;
- what is installed: rules, chains and map elements read back from the kernel (listeners for
  userspace-dnat), and the host's slab memory before and after (host-wide, so noisy).
Everything lands in the summary's ``scale`` section (results/README.md) and
``scale_connects.parquet`` (one row per connection).
"""

from __future__ import annotations

import asyncio
import contextlib
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import psutil

from lbbench.config.scale import ScaleConfig
from lbbench.frontends.base import Frontend, FrontendPlan
from lbbench.frontends.kernel.frontend import KernelFrontend
from lbbench.model.addresses import HostPort
from lbbench.run.scale_installed import installed, slab_kib
from lbbench.run.scale_layout import ScaleLayout, build_layout, moved_endpoints
from lbbench.run.scale_probe import ProbeRows, probe
from lbbench.system.netns import in_private_netns
from lbbench.system.procs import Supervisor

Log = Callable[[str], None]
OnCell = Callable[[dict[str, Any], pd.DataFrame], object]  # the section and rows so far, after each cell
SWEEP_FRONTENDS = ("kernel-iptables", "kernel-nftables", "userspace-dnat")
FD_MARGIN = 200  # descriptors a forwarder needs besides its listeners


@dataclass(frozen=True)
class SweepTarget:
    """One column of the sweep: a front end, with its iptables backend when it has one."""

    label: str  # "kernel-iptables-legacy", "kernel-nftables", ...
    frontend: str
    backend: str | None = None

    def make(self, plan: FrontendPlan, sup: Supervisor) -> Frontend:
        from lbbench.frontends.registry import frontend_class

        if self.frontend == "kernel-iptables":
            from lbbench.frontends.kernel.iptables import KernelIptables

            return KernelIptables(plan, sup, backend=self.backend or "auto")  # type: ignore[arg-type]
        cls = frontend_class(self.frontend)
        assert not isinstance(cls, str)
        return cls(plan, sup)


def sweep_targets(frontends: tuple[str, ...], scale: ScaleConfig) -> tuple[list[SweepTarget], dict[str, str]]:
    """The columns to measure, and the front ends left out with why."""
    targets: list[SweepTarget] = []
    skipped: dict[str, str] = {}
    for name in frontends:
        if name not in SWEEP_FRONTENDS:
            skipped[name] = f"not a DNAT data plane: the sweep measures {', '.join(SWEEP_FRONTENDS)}"
        elif name == "kernel-iptables":
            targets += [SweepTarget(f"{name}-{b}" if b != "auto" else name, name, b) for b in scale.iptables_backends]
        else:
            targets.append(SweepTarget(name, name))
    return targets, skipped


def _quantiles_us(values_ns: np.ndarray, qs: dict[str, float]) -> dict[str, float | None]:
    if values_ns.size == 0:
        return {k: None for k in qs}
    return {k: round(float(np.quantile(values_ns, q)) / 1e3, 2) for k, q in qs.items()}


_CONNECT_Q = {"p01": 0.01, "p50": 0.5, "p99": 0.99}
_REQUEST_Q = {"p50": 0.5, "p99": 0.99}


def latency_figures(rows: ProbeRows, keys: list[str]) -> dict[str, Any]:
    """Connect and request quantiles pooled and per Service under test, with sample and failure counts."""
    target = np.asarray(rows.target)
    connect = np.asarray(rows.connect_ns, dtype=float)
    request = np.asarray(rows.request_ns, dtype=float)
    failed = np.asarray([bool(e) for e in rows.error])

    def block(mask: np.ndarray) -> dict[str, Any]:
        ok_connect = connect[mask & (connect >= 0)]
        ok_request = request[mask & ~failed]
        return {"connections": int(mask.sum()), "failed": int((mask & failed).sum()),
                "connect_us": {**_quantiles_us(ok_connect, _CONNECT_Q), "n": int(ok_connect.size)},
                "request_us": {**_quantiles_us(ok_request, _REQUEST_Q), "n": int(ok_request.size)}}

    everything = np.ones(target.size, dtype=bool)
    errors: dict[str, int] = {}
    for e in rows.error:
        if e:
            errors[e] = errors.get(e, 0) + 1
    late = np.asarray(rows.late_ns, dtype=float)
    return {"pooled": block(everything), "per_service": {k: block(target == i) for i, k in enumerate(keys)},
            "errors": errors, "late_us": _quantiles_us(late, {"p50": 0.5, "p99": 0.99})}


def _timing(values: list[tuple[float, float]]) -> dict[str, Any]:
    """(seconds, cpu seconds) pairs -> p50/max in ms."""
    if not values:
        return {"n": 0, "p50_ms": None, "max_ms": None, "cpu_p50_ms": None}
    took = np.asarray([v[0] for v in values]) * 1e3
    cpu = np.asarray([v[1] for v in values]) * 1e3
    return {"n": len(values), "p50_ms": round(float(np.median(took)), 3), "max_ms": round(float(took.max()), 3),
            "cpu_p50_ms": round(float(np.median(cpu)), 3)}


def _cpu_of(fe: Frontend) -> float:
    """CPU seconds of the front end's own processes (the forwarder) plus this process."""
    total = time.process_time()
    for pid in fe.pids():
        with contextlib.suppress(psutil.Error):
            t = psutil.Process(pid).cpu_times()
            total += t.user + t.system
    return total


async def _install(fe: Frontend, layout: ScaleLayout) -> None:
    if isinstance(fe, KernelFrontend):
        await fe.update_many(layout.endpoints)  # one sync, as kube-proxy's first after start
        return
    items = list(layout.endpoints.items())
    for i in range(0, len(items), 500):  # the forwarder answers each on its control pipe
        await asyncio.gather(*(fe.update_endpoints(k, v) for k, v in items[i:i + 500]))


async def _timed(fe: Frontend, action: Callable[[], Any]) -> tuple[float, float]:
    """(seconds, CPU seconds) of one sync: the loader's and our rendering for kernel front ends."""
    if isinstance(fe, KernelFrontend):
        before = len(fe.syncs)
        t0 = time.perf_counter()
        await action()
        took = time.perf_counter() - t0
        return took, sum(s.cpu_s for s in fe.syncs[before:])
    cpu0 = _cpu_of(fe)
    t0 = time.perf_counter()
    await action()
    return time.perf_counter() - t0, _cpu_of(fe) - cpu0


async def _sync_figures(fe: Frontend, layout: ScaleLayout, scale: ScaleConfig) -> dict[str, Any]:
    moved = layout.changed_service()
    changes = []
    for r in range(scale.endpoint_changes):
        eps = moved_endpoints(r, scale.endpoints_per_service)
        changes.append(await _timed(fe, lambda eps=eps: fe.update_endpoints(moved.key, eps)))  # type: ignore[misc]
    fulls = []
    for _ in range(scale.full_resyncs):
        if isinstance(fe, KernelFrontend):
            fulls.append(await _timed(fe, fe.full_resync))
        else:  # the forwarder's full sync: every Service's table sent again
            fulls.append(await _timed(fe, lambda: _install(fe, layout)))
    return {"endpoint_change": _timing(changes), "full_resync": _timing(fulls), "changed_service": moved.key}


def fd_limit() -> int:
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


async def measure_count(target: SweepTarget, layout: ScaleLayout, scale: ScaleConfig, sup: Supervisor,
                        seed: int) -> tuple[dict[str, Any], ProbeRows]:
    """Everything measured for one front end at one Service count."""
    plan = FrontendPlan(layout.services, seed=seed, in_netns=in_private_netns())
    fe = target.make(plan, sup)
    slab0 = slab_kib()
    t0 = time.perf_counter()
    try:
        await fe.start()
        await _install(fe, layout)
        install_s = time.perf_counter() - t0
        slab1 = slab_kib()
        found = await installed(fe, layout)
        keys = list(layout.positions)
        targets = [fe.entrypoint(k).addr for k in keys]
        rows = await asyncio.to_thread(probe, targets, scale.connections, scale.rate_rps)
        latency = latency_figures(rows, keys)
        syncs = await _sync_figures(fe, layout, scale)
        counters = await fe.counters()
    finally:
        await fe.stop()
    entry = {
        "services": len(layout.services), "endpoints": layout.endpoint_count,
        "positions": layout.positions, "install_s": round(install_s, 3), "installed": found,
        **latency, "answered": all(b["failed"] == 0 and b["connections"] > 0
                                   for b in latency["per_service"].values()),
        "sync": syncs, "memory": {"slab_delta_kib": None if slab0 is None or slab1 is None else slab1 - slab0,
                                  "note": "host-wide /proc/meminfo Slab, after install minus before start"},
        "counters": counters,
    }
    if isinstance(fe, KernelFrontend):
        entry["backend"] = getattr(fe, "backend_label", None) or fe.tool
    return entry, rows


def rows_frame(label: str, count: int, keys: list[str], positions: dict[str, int], rows: ProbeRows) -> pd.DataFrame:
    service = [keys[t] for t in rows.target]
    return pd.DataFrame({
        "frontend": label, "services": count, "service": service, "position": [positions[s] for s in service],
        "late_s": np.asarray(rows.late_ns) / 1e9,
        "connect_s": np.where(np.asarray(rows.connect_ns) >= 0, np.asarray(rows.connect_ns) / 1e9, np.nan),
        "request_s": np.where(np.asarray(rows.request_ns) >= 0, np.asarray(rows.request_ns) / 1e9, np.nan),
        "error": rows.error,
    })


async def run_sweep(scale: ScaleConfig, seed: int, frontends: tuple[str, ...], sup: Supervisor,
                    pods: list[HostPort], log: Log, on_cell: OnCell | None = None) \
        -> tuple[dict[str, Any], pd.DataFrame]:
    """The `scale` section of the summary, and one row per probe connection."""
    targets, skipped = sweep_targets(frontends, scale)
    section: dict[str, Any] = {
        "config": {"services": list(scale.services), "endpoints_per_service": scale.endpoints_per_service,
                   "under_test": scale.under_test, "connections": scale.connections, "rate_rps": scale.rate_rps,
                   "endpoint_changes": scale.endpoint_changes, "full_resyncs": scale.full_resyncs,
                   "iptables_backends": list(scale.iptables_backends), "seed": seed},
        "frontends": {}, "skipped": skipped,
    }
    frames: list[pd.DataFrame] = []
    for target in targets:
        section["frontends"][target.label] = {"frontend": target.frontend, "backend": target.backend, "counts": {}}
    # count by count, every front end in turn: the cells compared with each other are measured
    # minutes apart at most, not a whole sweep apart (a shared machine's load drifts)
    for count in scale.services:
        layout = build_layout(count, scale.endpoints_per_service, scale.under_test, seed, pods)
        for target in targets:
            where = f"{target.label} x {count} Services"
            if target.frontend == "userspace-dnat" and count + FD_MARGIN > fd_limit():
                skipped[where] = f"needs {count + FD_MARGIN} file descriptors (one listener per Service), " \
                                 f"the limit is {fd_limit()}"
                continue
            log(f"scale: {where}")
            try:
                entry, rows = await measure_count(target, layout, scale, sup, seed)
            except Exception as e:  # one cell failing (e.g. a netlink limit) must not lose the others
                last = str(e).strip().splitlines()[-1][:300] if str(e).strip() else ""
                skipped[where] = f"failed: {type(e).__name__}: {last}"
                log(f"scale: {where} failed: {skipped[where]}")
                continue
            section["frontends"][target.label]["counts"][str(count)] = entry
            frames.append(rows_frame(target.label, count, list(layout.positions), layout.positions, rows))
            if on_cell is not None:
                on_cell(section, pd.concat(frames, ignore_index=True))
            c = entry["pooled"]["connect_us"]
            log(f"scale: {where}: connect p01/p50/p99 {c['p01']}/{c['p50']}/{c['p99']} us, "
                f"sync p50 {entry['sync']['endpoint_change']['p50_ms']} ms, failed {entry['pooled']['failed']}")
    return section, pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
