"""What `lbbench bench` shows and writes: rich tables, bench.json, bench.png."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from lbbench.results.atomic import replace_atomically, write_text_atomically

RATIO_GOALS = {  # the goals, shown next to what was reached (None: no goal, report only)
    "dnat_vs_haproxy_tcp": 1.0,
    "l7_vs_haproxy_http": 0.7,
    "l7_vs_nginx": 1.0,
    "generator_vs_wrk": 0.8,  # issue 19: >= 0.8x wrk keep-alive, lateness p99 < 2 ms
}
CPU_GOALS = {"userspace-dnat": 1.0, "l7-proxy": 1.2}  # front-end CPU per 10k requests / HAProxy's, at most


def write_json(doc: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomically(path, json.dumps(doc, indent=2, allow_nan=False) + "\n")


def _med(s: dict[str, Any] | None, fmt: str = "{:,.0f}") -> str:
    return "-" if s is None else fmt.format(s["median"])


def _spread(s: dict[str, Any] | None) -> str:
    if s is None:
        return "-"
    return f"{s['spread_pct']:.0f}%" if s["n"] > 1 else "(1 run)"


def throughput_table(title: str, group: dict[str, Any]) -> Table:
    """Medians over the rounds; range = (max - min) / median."""
    t = Table(title=f"{title}  (backend: {group.get('backend', '?')})", title_justify="left")
    # CPU per request first: req/s compares cores as much as code (HAProxy runs a thread per CPU).
    for col in ("peer", "CPU s/10k req", "req/s", "range", "p50 ms", "p99 ms", "backend CPU s/10k",
                "client CPU s/10k", "SYN retrans", "errors"):
        t.add_column(col, justify="left" if col == "peer" else "right")
    for name, p in group.get("peers", {}).items():
        if p.get("status") != "ok":
            t.add_row(name, f"[dim]skipped: {p.get('reason', '')}[/dim]", "", "", "", "", "", "", "", "")
            continue
        cpu = p.get("frontend_cpu_s_per_10k")
        t.add_row(name, _med(cpu, "{:.3f}") if cpu else "n/a", _med(p["rps"]), _spread(p["rps"]),
                  _med(p.get("p50_ms"), "{:.2f}"), _med(p.get("p99_ms"), "{:.2f}"),
                  _med(p.get("backend_cpu_s_per_10k"), "{:.3f}"), _med(p.get("client_cpu_s_per_10k"), "{:.3f}"),
                  _syn_retrans(p.get("tcp")), str(sum(p.get("errors", {}).values())))
    return t


def _syn_retrans(tcp: dict[str, int] | None) -> str:
    """SYNs sent again over all rounds (TcpExt TCPSynRetrans of the namespace): dropped connection attempts."""
    return "-" if not tcp else f"{tcp.get('syn_retransmits', 0):,}"


def _wait_criterion(crit: dict[str, Any]) -> str:
    """The connection-wait part of the generator's criterion (bench.json files before the own-wait one
    judged the whole wait)."""
    if "own_wait_p99_ms_below" in crit:
        return (f"own connection wait p99 < {crit['own_wait_p99_ms_below']:g} ms, "
                f"{crit['answered_while_sending_min']:.0%} answered while sending")
    return f"connection wait p99 < {crit.get('pool_wait_p99_ms_below', math.nan):g} ms"


def generator_table(group: dict[str, Any]) -> Table:
    t = Table(title=f"generator against {group['target']}, {group['client']['connections']} keep-alive "
              f"connections, {group['client']['threads_or_workers']} thread(s)/worker(s)", title_justify="left")
    for col in ("client", "max req/s", "range", "how"):
        t.add_column(col, justify="left" if col in ("client", "how") else "right")
    peers = group["peers"]
    t.add_row("wrk", _med(peers["wrk"]["rps"]), _spread(peers["wrk"]["rps"]), "closed loop, as fast as it goes")
    crit = group["criterion"]
    t.add_row("lbbench", _med(peers["lbbench"]["rps"]), _spread(peers["lbbench"]["rps"]),
              f"open loop ({crit['arrivals']}), lateness p99 < {crit['lateness_p99_ms_below']:g} ms, "
              + _wait_criterion(crit) + ", searched")
    for name, label in (("lbbench-closed-loop", "lbbench closed loop"), ("wrk-close", "wrk, Connection: close"),
                        ("lbbench-close", "lbbench, close mode")):
        if (peer := peers.get(name)) is not None:
            t.add_row(label, _med(peer["rps"]), _spread(peer["rps"]), peer["note"])
    return t


def scale_table(group: dict[str, Any]) -> Table:
    t = Table(title="scale", title_justify="left")
    for col in ("figure", "median", "range"):
        t.add_column(col, justify="left" if col == "figure" else "right")
    figures = group.get("figures", {})
    if "pod_start" in figures:
        s = figures["pod_start"]["pods_per_s"]
        t.add_row(f"pods started per second (batch of {figures['pod_start']['batch']})", f"{s['median']:.2f}",
                  _spread(s))
    for key, f in figures.items():
        if key == "pod_start":
            continue
        label = key.replace("_", " ")
        if f.get("requested_services", f.get("services")) != f.get("services"):
            label = (f"nft apply {f['services']} services (one transaction of {f['requested_services']} was "
                     "refused: Message too long)")
        t.add_row(label, f"{f['seconds']['median'] * 1e3:,.1f} ms", _spread(f["seconds"]))
        for count, ratio in f.get("connect_p50_iptables_vs_nftables", {}).items():
            t.add_row(f"  connect p50 iptables / nftables at {int(count):,} Services",
                      "-" if ratio is None else f"{ratio:.2f}x", "")
    for key, why in group.get("skipped", {}).items():
        t.add_row(key.replace("_", " "), f"[dim]skipped: {why}[/dim]", "")
    return t


def ratio_table(doc: dict[str, Any]) -> Table:
    t = Table(title="ratios, paired round by round: CPU per request first (< 1 = cheaper), then req/s (> 1 = faster)",
              title_justify="left")
    for col in ("ratio", "median", "min", "max", "goal"):
        t.add_column(col, justify="left" if col == "ratio" else "right")
    notes = doc.get("ratio_notes", {})
    _cpu_ratio_rows(t, doc)  # the first figure: CPU per request against HAProxy's
    for name, r in doc.get("ratios", {}).items():
        if name == "cpu_per_10k_vs_haproxy":
            continue
        goal = RATIO_GOALS.get(name)
        goal_s = "" if goal is None else f">= {goal:g}"
        if r is None:
            t.add_row(name, f"[dim]{notes.get(name, 'n/a')}[/dim]", "", "", goal_s)
        else:
            mark = "" if goal is None else (" [green]ok[/green]" if r["median"] >= goal else " [red]below[/red]")
            t.add_row(name, f"{r['median']:.2f}{mark}", f"{r['min']:.2f}", f"{r['max']:.2f}", goal_s)
    return t


def _cpu_ratio_rows(t: Table, doc: dict[str, Any]) -> None:
    for fe, r in doc.get("ratios", {}).get("cpu_per_10k_vs_haproxy", {}).items():
        ref = "haproxy-tcp" if fe in _l4_peers(doc) else "haproxy"
        goal = CPU_GOALS.get(fe)
        goal_s = "report" if goal is None else f"<= {goal:g}"
        mark = "" if goal is None else (" [green]ok[/green]" if r["median"] <= goal else " [red]above[/red]")
        t.add_row(f"CPU per 10k req: {fe} / {ref} (< 1 = cheaper)", f"{r['median']:.2f}{mark}", f"{r['min']:.2f}",
                  f"{r['max']:.2f}", goal_s)


def _l4_peers(doc: dict[str, Any]) -> set[str]:
    """Names as cost figures spell them: L4 peers, and "(new connections)" for the Connection: close layer."""
    groups = doc["groups"]
    return ({n for n in groups.get("l4", {}).get("peers", {})}
            | {f"{n} (new connections)" for n in groups.get("l4_close", {}).get("peers", {})})


def print_report(doc: dict[str, Any], console: Console) -> None:
    groups = doc["groups"]
    console.print(ratio_table(doc))  # the headline first: CPU per request, then req/s, against the peers
    if "l4" in groups:
        console.print(throughput_table("L4: max keep-alive requests/s (wrk)", groups["l4"]))
    if "l4_close" in groups:
        console.print(throughput_table("L4: max new connections/s, one request each, Connection: close (wrk)",
                                       groups["l4_close"]))
    if "l7" in groups:
        console.print(throughput_table("L7: max keep-alive requests/s (wrk)", groups["l7"]))
    if "generator" in groups:
        console.print(generator_table(groups["generator"]))
    if "scale" in groups:
        console.print(scale_table(groups["scale"]))
    for s in doc["skipped"]:
        console.print(f"[yellow]skipped[/yellow] {s['group']}/{s['what']}: {s['reason']}")
    for w in doc["warnings"]:
        console.print(f"[yellow]warning[/yellow]: {w}")
    m = doc["machine"]
    console.print(f"{m.get('cpu_count')} CPUs ({m.get('cpu_model')}), load average "
                  f"{m.get('load_avg_start', ['?'])[0]} -> {m.get('load_avg_end', ['?'])[0]}, "
                  f"{doc['wall_s']:.0f} s, lbbench {m.get('lbbench_build', 'pure Python')}, "
                  f"{m.get('dnat_relay', 'Python relay')}, {m.get('response_scan', 'httptools')}, "
                  f"{m.get('load_client', 'Python load client')}, {m.get('proxy_heads', 'httptools proxy parse')}")


# -- plot -------------------------------------------------------------------------------------------
def _bars(ax: Any, title: str, rows: list[tuple[str, dict[str, Any]]], unit: str) -> None:
    names = [n for n, _ in rows]
    med = [s["median"] for _, s in rows]
    lo = [s["median"] - s["min"] for _, s in rows]
    hi = [s["max"] - s["median"] for _, s in rows]
    ax.bar(range(len(rows)), med, yerr=[lo, hi], capsize=4, color="#1f77b4")
    ax.set_xticks(range(len(rows)), names, rotation=20, ha="right", fontsize=8)
    ax.set_title(title, fontsize=10)
    ax.set_ylabel(unit, fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    if not rows:
        ax.text(0.5, 0.5, "not measured", ha="center", va="center", transform=ax.transAxes)


def _ok_peers(group: dict[str, Any] | None, key: str) -> list[tuple[str, dict[str, Any]]]:
    if not group:
        return []
    return [(n, p[key]) for n, p in group.get("peers", {}).items() if p.get("status") == "ok" and p.get(key)]


def write_plot(doc: dict[str, Any], path: Path) -> None:
    """Four panels: L4 and L7 requests/s, CPU per 10k requests, generator vs wrk (bars: median, min-max)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    g = doc["groups"]
    fig = Figure(figsize=(11, 7.5), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, 2)
    _bars(axes[0][0], "L4 requests/s", _ok_peers(g.get("l4"), "rps"), "req/s")
    _bars(axes[0][1], "L7 requests/s", _ok_peers(g.get("l7"), "rps"), "req/s")
    cpu = [(f"{n} ({lay})", p["frontend_cpu_s_per_10k"]) for lay in ("l4", "l7")
           for n, p in g.get(lay, {}).get("peers", {}).items()
           if p.get("status") == "ok" and p.get("frontend_cpu_s_per_10k")]
    _bars(axes[1][0], "front-end CPU seconds per 10k requests", cpu, "CPU s")
    _bars(axes[1][1], "generator: max requests/s", _ok_peers(g.get("generator"), "rps"), "req/s")
    load = doc["machine"].get("load_avg_start", [math.nan])[0]
    fig.suptitle(f"lbbench bench, {doc['created_utc']}, {doc['machine'].get('cpu_count')} CPUs, "
                 f"load {load}", fontsize=11)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    replace_atomically(path, lambda tmp: fig.savefig(tmp, format="png"))
