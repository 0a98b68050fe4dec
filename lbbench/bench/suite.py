"""The whole `lbbench bench` run: groups side by side, ratios round by round, machine metadata.

The result is one versioned JSON document (schema ``lbbench.bench/1``), see `output` for
its table and plot. Everything runs under one Supervisor, so every peer, pod and client
dies with the run.
"""

from __future__ import annotations

import asyncio
import dataclasses
import platform
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import psutil

from lbbench import __version__
from lbbench.bench import generator as gen
from lbbench.bench import scale, throughput
from lbbench.bench.peers import ClientSettings, StaticNginx, Wrk, tool_versions, wrk_unavailable_reason
from lbbench.bench.stats import Stat, is_unstable, paired_ratio, stat
from lbbench.bench.throughput import GroupRun, Pids, per_10k
from lbbench.cluster.standalone import fresh_ip, start_pod
from lbbench.model.addresses import HostPort
from lbbench.system.compiled import (
    build_label,
    load_client_label,
    proxy_heads_label,
    relay_label,
    response_scan_label,
)
from lbbench.system.netns import in_private_netns
from lbbench.system.procs import Supervisor

SCHEMA = "lbbench.bench/1"
GROUPS = ("l4", "l7", "generator", "cost", "scale")
Backend = Literal["pod", "nginx"]
Log = Callable[[str], None]

# name -> (group, numerator peer, denominator peer): requests/s ratios, paired by round
RPS_RATIOS: dict[str, tuple[str, str, str]] = {
    "dnat_vs_haproxy_tcp": ("l4", "userspace-dnat", "haproxy-tcp"),
    "dnat_vs_kernel_nftables": ("l4", "userspace-dnat", "kernel-nftables"),
    "dnat_vs_direct": ("l4", "userspace-dnat", "direct"),
    "ebpf_vs_direct": ("l4", "ebpf-socketlb", "direct"),
    "kernel_nftables_vs_direct": ("l4", "kernel-nftables", "direct"),
    "ebpf_new_conns_vs_direct": ("l4_close", "ebpf-socketlb", "direct"),
    "kernel_nftables_new_conns_vs_direct": ("l4_close", "kernel-nftables", "direct"),
    "dnat_new_conns_vs_direct": ("l4_close", "userspace-dnat", "direct"),
    "l7_vs_haproxy_http": ("l7", "l7-proxy", "haproxy"),
    "l7_vs_nginx": ("l7", "l7-proxy", "nginx"),
    "l7_vs_httpd": ("l7", "l7-proxy", "httpd"),
}
HAPROXY_OF = {"l4": "haproxy-tcp", "l4_close": "haproxy-tcp", "l7": "haproxy"}
# the L4 peers twice: keep-alive requests/s ("l4") and new connections/s with Connection: close ("l4_close")
LAYERS_OF = {"l4": ("l4", "l4_close"), "l7": ("l7",)}


@dataclass(frozen=True)
class BenchSettings:
    duration_s: float = 2.0
    repeats: int = 3
    groups: tuple[str, ...] = GROUPS
    backend: Backend = "pod"
    client: ClientSettings = field(default_factory=ClientSettings)
    generator_workers: int = 1  # lbbench worker processes; wrk gets as many threads

    def __post_init__(self) -> None:
        if not self.duration_s > 0:
            raise ValueError(f"duration must be > 0 s, got {self.duration_s}")
        if self.repeats < 1:
            raise ValueError(f"repeats must be >= 1, got {self.repeats}")
        unknown = [g for g in self.groups if g not in GROUPS]
        if unknown or not self.groups:
            raise ValueError(f"unknown group {unknown[0] if unknown else '(none)'!r}; expected some of "
                             f"{', '.join(GROUPS)}")

    @property
    def warmup_s(self) -> float:
        return min(1.0, self.duration_s / 2)

    @property
    def layers(self) -> tuple[str, ...]:
        """Throughput groups to run: cost is derived from them, so it needs both."""
        return tuple(lay for g in ("l4", "l7") if g in self.groups or "cost" in self.groups for lay in LAYERS_OF[g])

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["groups"] = list(self.groups)
        d["warmup_s"] = self.warmup_s
        return d


@dataclass
class SuiteState:
    doc: dict[str, Any]
    throughput: dict[str, GroupRun] = field(default_factory=dict)
    generator: gen.GeneratorRun | None = None

    def skip(self, group: str, what: str, reason: str) -> None:
        self.doc["skipped"].append({"group": group, "what": what, "reason": reason})


# -- backend ----------------------------------------------------------------------------------------
@dataclass
class BackendProc:
    description: str
    addr: HostPort
    pids: Pids
    stop: Callable[[], Awaitable[None]]


async def start_backend(sup: Supervisor, kind: Backend) -> BackendProc:
    """The one backend every peer of the throughput groups forwards to."""
    if kind == "nginx":
        target = StaticNginx(sup, HostPort(fresh_ip(), 8080))
        await target.start()
        return BackendProc("nginx return 200 (1 process)", target.addr, target.pids, target.stop)
    child, addr = await asyncio.to_thread(start_pod, sup, "bench-pod", slots=64)

    async def stop() -> None:
        await child.stop(2.0)
        child.close_pipes()

    return BackendProc("lbbench serve pod --service const:0ms --slots 64", addr,
                       lambda: [child.pid] if child.alive() else [], stop)


# -- groups -----------------------------------------------------------------------------------------
async def run_layer(state: SuiteState, layer: str, sup: Supervisor, wrk: Wrk, backend: BackendProc,
                    settings: BenchSettings, log: Log) -> None:
    kind = "l7" if layer == "l7" else "l4"
    peers = throughput.L4_PEERS if kind == "l4" else throughput.L7_PEERS
    def layer_log(msg: str) -> None:
        log(f"{layer}: {msg}")

    run = await throughput.start_peers(peers, sup, backend.addr, kind, log)
    try:
        await throughput.measure(run, wrk, backend.pids, settings.duration_s, settings.repeats,
                                 settings.warmup_s, layer_log)
    finally:
        await throughput.stop_all(run)
    state.throughput[layer] = run
    for name, why in run.skipped.items():
        state.skip(layer, name, why)
    state.doc["groups"][layer] = {"backend": backend.description, "peers": throughput.group_figures(run, peers)}


async def run_throughput(state: SuiteState, sup: Supervisor, workdir: Path, settings: BenchSettings,
                         log: Log) -> None:
    if (why := wrk_unavailable_reason()) is not None:
        for layer in settings.layers:
            state.skip(layer, "all", why)
        return
    if settings.backend == "nginx" and (why := StaticNginx.unavailable_reason()) is not None:
        for layer in settings.layers:
            state.skip(layer, "all", f"--backend nginx: {why}")
        return
    close = dataclasses.replace(settings.client, keepalive=False)
    backend = await start_backend(sup, settings.backend)
    try:
        for layer in settings.layers:
            wrk = Wrk(sup, workdir, close if layer == "l4_close" else settings.client)
            await run_layer(state, layer, sup, wrk, backend, settings, log)
    finally:
        await backend.stop()


async def run_generator(state: SuiteState, sup: Supervisor, workdir: Path, settings: BenchSettings,
                        log: Log) -> None:
    why = wrk_unavailable_reason() or StaticNginx.unavailable_reason()
    if why is not None:
        state.skip("generator", "all", why)
        return
    n = settings.generator_workers
    client = ClientSettings(threads=n, connections=settings.client.connections)
    wrk = Wrk(sup, workdir, client)
    wrk_close = Wrk(sup, workdir, dataclasses.replace(client, keepalive=False))
    target = StaticNginx(sup, HostPort(fresh_ip(), 8080))
    await target.start()
    try:
        async def wrk_once() -> tuple[float, float]:
            r = await wrk.run(target.addr, None, settings.duration_s)
            return r.rps, r.p99_ms

        async def probe(rate: float) -> gen.Probe:
            return await gen.lbbench_probe(target.addr, rate, settings.duration_s, client.connections, n, seed=1)

        async def closed_once() -> float:
            return await gen.lbbench_closed_loop(target.addr, settings.duration_s, client.connections, n)

        async def wrk_close_once() -> float:
            return (await wrk_close.run(target.addr, None, settings.duration_s)).rps

        async def close_probe(rate: float) -> gen.Probe:
            return await gen.lbbench_probe(target.addr, rate, settings.duration_s, None, n, seed=1)

        await wrk.run(target.addr, None, settings.warmup_s)
        run = await gen.run_rounds(wrk_once, probe, closed_once, settings.repeats, lambda m: log(f"generator: {m}"),
                                   gen.CloseSides(wrk_close_once, close_probe))
    finally:
        await target.stop()
    state.generator = run
    state.doc["groups"]["generator"] = {
        "target": "nginx return 200 (1 process)",
        "client": {"connections": client.connections, "threads_or_workers": n, "keepalive": True},
        "criterion": {"lateness_p99_ms_below": gen.LATENESS_P99_MAX_S * 1e3,
                      "own_wait_p99_ms_below": gen.OWN_WAIT_P99_MAX_S * 1e3,
                      "answered_while_sending_min": gen.ANSWERED_FRACTION_MIN, "ok_fraction_min": gen.OK_FRACTION_MIN,
                      "achieved_fraction_min": gen.ACHIEVED_FRACTION_MIN, "arrivals": "poisson"},
        "peers": {
            "wrk": {"status": "ok", "rps": stat(run.wrk_rps), "p99_ms": stat(run.wrk_p99_ms)},
            "lbbench": {"status": "ok", "rps": stat(run.lbbench_rps),
                        "probes": [[p.to_dict() for p in ps] for ps in run.probes]},
            "lbbench-closed-loop": {"status": "ok", "rps": stat(run.closed_rps),
                                    "note": f"{client.connections} users, no think time, keep-alive: wrk's way"},
            "wrk-close": {"status": "ok", "rps": stat(run.wrk_close_rps),
                          "note": f"{client.connections} connections, Connection: close (a new one per request)"},
            "lbbench-close": {"status": "ok", "rps": stat(run.close_rps),
                              "probes": [[p.to_dict() for p in ps] for ps in run.close_probes],
                              "note": "open loop, a new connection per request, searched (the criterion above)"},
        },
    }


async def run_scale(state: SuiteState, sup: Supervisor, settings: BenchSettings, log: Log) -> None:
    figures, skipped = await scale.run_scale(sup, settings.repeats, log)
    for what, why in skipped.items():
        state.skip("scale", what, why)
    state.doc["groups"]["scale"] = {"figures": figures, "skipped": skipped}


# -- derived figures --------------------------------------------------------------------------------
def _rounds(state: SuiteState, layer: str, name: str) -> list[throughput.Round] | None:
    run = state.throughput.get(layer)
    return run.rounds.get(name) if run is not None else None


def _missing(state: SuiteState, layer: str, name: str) -> str:
    run = state.throughput.get(layer)
    if run is None:
        return f"group {layer} did not run"
    return f"{name}: {run.skipped.get(name, 'not measured')}"


def _cpu_per_10k(rounds: Sequence[throughput.Round]) -> list[float]:
    return [per_10k(r.frontend_cpu_s, r.requests) for r in rounds]


def cost_figures(state: SuiteState) -> dict[str, Any]:
    """CPU seconds per 10k requests of each front end's processes, and against HAProxy's, by round."""
    out: dict[str, Any] = {}
    for layer, run in state.throughput.items():
        ref = run.rounds.get(HAPROXY_OF[layer])
        for t in run.targets:
            rounds = run.rounds.get(t.name)
            if not t.own_process or not rounds:
                continue
            mine = _cpu_per_10k(rounds)
            vs = paired_ratio(mine, _cpu_per_10k(ref)) if ref and t.name != HAPROXY_OF[layer] else None
            own = throughput.stat_or_none(mine)
            if own is not None:
                out[t.name if layer != "l4_close" else f"{t.name} (new connections)"] = {
                    "layer": layer, "cpu_s_per_10k": own, "vs_haproxy": vs}
    return out


def ratios(state: SuiteState) -> tuple[dict[str, Any], dict[str, str]]:
    out: dict[str, Any] = {}
    notes: dict[str, str] = {}
    for name, (layer, num, den) in RPS_RATIOS.items():
        a, b = _rounds(state, layer, num), _rounds(state, layer, den)
        if a and b:
            out[name] = paired_ratio([r.rps for r in a], [r.rps for r in b])
        else:
            out[name] = None
            notes[name] = _missing(state, layer, num if not a else den)
    g = state.generator
    out["generator_vs_wrk"] = paired_ratio(g.lbbench_rps, g.wrk_rps) if g else None
    out["generator_closed_loop_vs_wrk"] = paired_ratio(g.closed_rps, g.wrk_rps) if g else None
    out["generator_close_vs_wrk_close"] = paired_ratio(g.close_rps, g.wrk_close_rps) if g else None
    if g is None:
        for name in ("generator_vs_wrk", "generator_closed_loop_vs_wrk", "generator_close_vs_wrk_close"):
            notes[name] = "group generator did not run"
    cost = {k: v["vs_haproxy"] for k, v in cost_figures(state).items() if v["vs_haproxy"] is not None}
    out["cpu_per_10k_vs_haproxy"] = cost
    if not cost:
        notes["cpu_per_10k_vs_haproxy"] = "no HAProxy measured (or no front end with a process)"
    return out, notes


# -- metadata and warnings ----------------------------------------------------------------------------
def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine(sup: Supervisor) -> dict[str, Any]:
    uname = platform.uname()
    return {
        "lbbench_version": __version__,
        "python": sys.version.split()[0],
        "kernel": f"{uname.system} {uname.release}",
        "machine": uname.machine,
        "cpu_model": _cpu_model(),
        "cpu_count": psutil.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "load_avg_start": [round(x, 2) for x in psutil.getloadavg()],
        "in_private_netns": in_private_netns(),
        "lbbench_build": build_label(),  # the L7 proxy's and the generator's hot paths: compiled or not
        "dnat_relay": relay_label(),  # userspace-dnat's: native engine or Python relay (its workers inherit env)
        # the load client's response heads: the C scan, its Python specification, or httptools alone
        "response_scan": response_scan_label(),
        # the generator's client: the C engine or HttpClient (its workers inherit env)
        "load_client": load_client_label(),
        # the L7 proxy's common request and response heads: the C scan, or httptools (its worker inherits env)
        "proxy_heads": proxy_heads_label(),
        "tools": tool_versions(sup),
    }


def _stats_in(prefix: str, node: Any) -> list[tuple[str, Stat]]:
    """Every Stat in a nested figure tree, with its path."""
    if isinstance(node, dict):
        if {"median", "spread_pct", "n"} <= node.keys():
            return [(prefix, node)]  # type: ignore[list-item]
        if "probes" in node:
            node = {k: v for k, v in node.items() if k != "probes"}
        return [x for k, v in node.items() for x in _stats_in(f"{prefix}.{k}" if prefix else k, v)]
    return []


def collect_warnings(doc: dict[str, Any], settings: BenchSettings) -> list[str]:
    out = []
    if settings.repeats < 3:
        out.append(f"only {settings.repeats} repeat(s): no meaningful spread; use --repeats 3 or more")
    load = doc["machine"]["load_avg_start"][0]
    cpus = doc["machine"]["cpu_count"] or 1
    if load > cpus:
        out.append(f"load average {load:.1f} on {cpus} CPUs at the start: other processes competed for CPU, "
                   "trust the ratios (measured side by side) more than the absolute figures")
    for path, s in _stats_in("", doc["groups"]):
        if is_unstable(s) and path.endswith(".rps"):
            out.append(f"{path}: spread {s['spread_pct']:.0f}% over {s['n']} rounds, may be unstable "
                       "(busy machine?); rerun with more --repeats or a longer --duration")
    for layer in ("l4", "l4_close", "l7"):
        for name, p in doc["groups"].get(layer, {}).get("peers", {}).items():
            errors = sum(p.get("errors", {}).values())
            if errors > 0.01 * max(1, p.get("requests", 0)):
                out.append(f"{layer} {name}: {errors} of {p['requests']} requests failed ({p['errors']})")
            if (syn := p.get("tcp", {}).get("syn_retransmits", 0)) > 0:
                out.append(f"{layer} {name}: the kernel dropped {syn} SYNs and they were sent again (1 s later "
                           "each): its req/s is lowered by the namespace, not only by the peer")
    return out


# -- the run ----------------------------------------------------------------------------------------
def new_document(settings: BenchSettings, argv: Sequence[str]) -> dict[str, Any]:
    return {
        "schema": SCHEMA,
        "created_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": ["lbbench", *argv],
        "settings": settings.to_dict(),
        "client": asdict(settings.client),
        "machine": {},
        "groups": {},
        "ratios": {},
        "ratio_notes": {},
        "skipped": [],
        "warnings": [],
        "wall_s": 0.0,
    }


async def guarded(state: SuiteState, group: str, step: Awaitable[None], log: Log) -> None:
    """Run one group; if it fails as a whole, the others still run and the reason is kept."""
    try:
        await step
    except Exception as e:
        lines = str(e).strip().splitlines()
        why = f"failed: {type(e).__name__}: {lines[0] if lines else ''}"
        state.skip(group, "all", why)
        log(f"{group}: {why}")


async def run_suite(settings: BenchSettings, argv: Sequence[str], log: Log) -> dict[str, Any]:
    started = time.monotonic()
    state = SuiteState(new_document(settings, argv))
    sup = Supervisor()
    tmp = tempfile.TemporaryDirectory(prefix="lbbench-bench-")
    try:
        state.doc["machine"] = machine(sup)
        work = Path(tmp.name)
        if settings.layers:
            await guarded(state, "/".join(settings.layers), run_throughput(state, sup, work, settings, log), log)
        if "generator" in settings.groups:
            await guarded(state, "generator", run_generator(state, sup, work, settings, log), log)
        if "scale" in settings.groups:
            await guarded(state, "scale", run_scale(state, sup, settings, log), log)
        if "cost" in settings.groups:
            state.doc["groups"]["cost"] = {"peers": cost_figures(state)}
        state.doc["ratios"], state.doc["ratio_notes"] = ratios(state)
    finally:
        await sup.aclose()
        tmp.cleanup()
    state.doc["machine"]["load_avg_end"] = [round(x, 2) for x in psutil.getloadavg()]
    state.doc["wall_s"] = round(time.monotonic() - started, 1)
    state.doc["warnings"] = collect_warnings(state.doc, settings)
    return state.doc
