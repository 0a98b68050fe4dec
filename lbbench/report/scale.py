"""The report's Service-count sweep section: tables, two plots and the verdict against the published shape.

Reads only summary.json's ``scale`` section (see results/README.md). The published shape (the
Kubernetes blog "NFTables mode for kube-proxy", 2025, and KEP-3866): iptables first-packet
latency grows linearly with the number of Services, nftables stays flat; at 5,000 and 10,000
Services nftables' p50 is about iptables' p01.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lbbench.report.doc import Block, Image, Paragraph, Section, Table
from lbbench.report.loader import Results
from lbbench.report.plotkit import colors, new_figure, save, style

BLOG_COUNT = 10_000
ABOUT_THE_SAME = 1.25  # "about the same": within 25 %


def _cells(scale: dict[str, Any]) -> dict[str, dict[int, dict[str, Any]]]:
    return {label: {int(c): e for c, e in fe.get("counts", {}).items()}
            for label, fe in (scale.get("frontends") or {}).items()}


def _num(value: Any, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _rules(entry: dict[str, Any]) -> str:
    found = entry.get("installed", {}).get("found", {})
    if "listeners" in found:
        return f"{found['listeners']:,} listeners"
    if "service_ips_elements" in found:
        return f"{found['rules']:,} rules, {found['service_ips_elements']:,} elements"
    return f"{found.get('rules', 0):,} rules"


def figures_table(cells: dict[str, dict[int, dict[str, Any]]]) -> Table:
    rows = []
    for label, counts in cells.items():
        for count, e in sorted(counts.items()):
            c, r = e["pooled"]["connect_us"], e["pooled"]["request_us"]
            sync = e["sync"]
            rows.append((label, f"{count:,}", _num(c["p01"]), _num(c["p50"]), _num(c["p99"]), _num(r["p50"]),
                         f"{c['n']:,}", str(e["pooled"]["failed"]), _num(sync["endpoint_change"]["p50_ms"], 1),
                         _num(sync["full_resync"]["p50_ms"], 1), _rules(e), "yes" if e.get("answered") else "NO"))
    return Table(("front end", "Services", "connect p01 us", "p50 us", "p99 us", "request p50 us", "samples",
                  "failed", "sync p50 ms", "full resync p50 ms", "installed", "all answered"), tuple(rows),
                 caption="Connect: client-side TCP handshake of new connections to the Services under test "
                         "(pooled); sync: one Service's endpoints changed; installed: read back from the kernel.")


def positions_table(cells: dict[str, dict[int, dict[str, Any]]]) -> Table:
    """At each front end's largest count: every Service under test, by its position in the rule order."""
    rows = []
    for label, counts in cells.items():
        count = max(counts)
        entry = counts[count]
        for key, pos in sorted(entry.get("positions", {}).items(), key=lambda kv: kv[1]):
            c = entry.get("per_service", {}).get(key, {}).get("connect_us", {})
            rows.append((label, f"{count:,}", f"{pos:,}", _num(c.get("p01")), _num(c.get("p50")),
                         _num(c.get("p99")), f"{c.get('n', 0):,}"))
    return Table(("front end", "Services", "position", "connect p01 us", "p50 us", "p99 us", "samples"),
                 tuple(rows), caption="Per Service under test at its seeded position (0 = first rule walked); "
                                      "iptables walks KUBE-SERVICES in this order, nftables and the forwarder "
                                      "look the address up.")


def iptables_label(cells: dict[str, Any]) -> str | None:
    names = [n for n in cells if n.startswith("kernel-iptables")]
    return "kernel-iptables-legacy" if "kernel-iptables-legacy" in names else (names[0] if names else None)


def ratio_table(cells: dict[str, dict[int, dict[str, Any]]]) -> Table | None:
    ipt = iptables_label(cells)
    nft = cells.get("kernel-nftables")
    if ipt is None or not nft:
        return None
    rows = []
    for count in sorted(set(cells[ipt]) & set(nft)):
        a, b = cells[ipt][count]["pooled"]["connect_us"], nft[count]["pooled"]["connect_us"]
        sa = cells[ipt][count]["sync"]["endpoint_change"]["p50_ms"]
        sb = nft[count]["sync"]["endpoint_change"]["p50_ms"]
        rows.append((f"{count:,}", *(_ratio(a[q], b[q]) for q in ("p01", "p50", "p99")), _ratio(sa, sb)))
    return Table(("Services", "connect p01", "p50", "p99", "sync p50"), tuple(rows),
                 caption=f"{ipt} / kernel-nftables, measured in the same run.")


def _ratio(a: float | None, b: float | None) -> str:
    return "-" if a is None or not b else f"{a / b:.2f}x"


def verdict(cells: dict[str, dict[int, dict[str, Any]]]) -> str:
    """One sentence: does lbbench reproduce the blog's shape, with the numbers."""
    ipt = iptables_label(cells)
    nft = cells.get("kernel-nftables")
    if ipt is None or not nft:
        return "No verdict: the sweep needs both kernel-iptables and kernel-nftables."
    common = sorted(set(cells[ipt]) & set(nft))
    if len(common) < 2:
        return "No verdict: the sweep needs at least two Service counts measured by both kernel front ends."
    at = BLOG_COUNT if BLOG_COUNT in common else common[-1]
    lo = common[0]
    i_at, n_at = cells[ipt][at]["pooled"]["connect_us"], nft[at]["pooled"]["connect_us"]
    i_lo, n_lo = cells[ipt][lo]["pooled"]["connect_us"], nft[lo]["pooled"]["connect_us"]
    if None in (i_at["p50"], n_at["p50"], i_at["p01"], i_lo["p50"], n_lo["p50"]):
        return "No verdict: a connect figure is missing (every connection failed?)."
    i_growth, n_growth = i_at["p50"] / i_lo["p50"], n_at["p50"] / n_lo["p50"]
    same = n_at["p50"] <= i_at["p01"] * ABOUT_THE_SAME
    shape = i_at["p50"] > n_at["p50"] and i_growth > n_growth and same
    return (f"lbbench {'reproduces' if shape else 'does not reproduce'} the published shape: at {at:,} Services "
            f"the {ipt} connect p50 is {i_at['p50']:.0f} us against {n_at['p50']:.0f} us for nftables "
            f"({i_at['p50'] / n_at['p50']:.2f}x), and nftables' p50 is {n_at['p50'] / i_at['p01']:.2f}x iptables' "
            f"p01 of {i_at['p01']:.0f} us (the blog: \"about the same\"); from {lo:,} to {at:,} Services the iptables "
            f"p50 grew {i_growth:.2f}x and the nftables p50 {n_growth:.2f}x.")


def _plot_connect(cells: dict[str, dict[int, dict[str, Any]]], out_dir: Path) -> Image:
    fig, axes = new_figure(1, 3, height=3.0, sharex=True, sharey=False, wspace=0.3)
    palette = colors(list(cells))
    for ax, q in zip(axes, ("p01", "p50", "p99"), strict=True):
        for label, counts in cells.items():
            xs = sorted(c for c, e in counts.items() if e["pooled"]["connect_us"][q] is not None)
            ax.plot(xs, [counts[c]["pooled"]["connect_us"][q] for c in xs], marker="o", label=label,
                    color=palette[label])
        ax.set_xscale("log")
        ax.set_xlabel("Services")
        style(ax, f"connect {q} (us)")
    axes[0].legend(fontsize=8)
    plot = save(fig, out_dir, "scale_connect", "First-packet latency vs Service count")
    return Image(plot.path, plot.title, "Client-side TCP handshake of new connections to the Services under test, "
                                        "pooled over their seeded positions; log x.")


def _plot_sync(cells: dict[str, dict[int, dict[str, Any]]], out_dir: Path) -> Image:
    fig, axes = new_figure(1, 2, height=3.0, sharex=True, sharey=False, wspace=0.3)
    palette = colors(list(cells))
    for ax, (key, title) in zip(axes, (("endpoint_change", "one endpoint change, p50 (ms)"),
                                       ("full_resync", "full resync, p50 (ms)")), strict=True):
        for label, counts in cells.items():
            xs = sorted(c for c, e in counts.items() if e["sync"][key]["p50_ms"] is not None)
            ax.plot(xs, [counts[c]["sync"][key]["p50_ms"] for c in xs], marker="o", label=label,
                    color=palette[label])
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("Services")
        style(ax, title)
    axes[0].legend(fontsize=8)
    plot = save(fig, out_dir, "scale_sync", "Sync time vs Service count")
    return Image(plot.path, plot.title, "From the change handed to the front end until the data plane has it "
                                        "(iptables: one restore; nftables: nft -f; userspace-dnat: the forwarder's "
                                        "acknowledgement).")


def scale_sections(r: Results) -> list[Section]:
    """The sweep's section, or nothing when the run was not one."""
    scale = r.summary.get("scale")
    if not scale:
        return []
    cells = {label: counts for label, counts in _cells(scale).items() if counts}
    blocks: list[Block] = [Paragraph(verdict(cells))] if cells else [Paragraph("The sweep measured nothing.")]
    if cells:
        blocks.append(figures_table(cells))
        if (ratios := ratio_table(cells)) is not None:
            blocks.append(ratios)
        blocks.append(positions_table(cells))
        out_dir = r.folder / "plots"
        out_dir.mkdir(parents=True, exist_ok=True)
        blocks += [_plot_connect(cells, out_dir), _plot_sync(cells, out_dir)]
    skipped = scale.get("skipped") or {}
    if skipped:
        blocks.append(Table(("what", "why"), tuple((k, str(v)) for k, v in skipped.items()),
                            caption="Left out of the sweep."))
    return [Section("Service-count sweep (iptables O(n) vs nftables O(1))", tuple(blocks))]
