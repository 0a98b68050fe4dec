"""Compare two results folders: per front end side by side with deltas, and one combined latency CDF.

Folders of different schemas refuse to compare; different configs, seeds, rates, machines or
versions compare but are said out loud (a delta across machines is not a regression).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lbbench.errors import UserError
from lbbench.report.doc import Table
from lbbench.report.loader import FrontendStats, Results, load_results
from lbbench.report.metrics import Metric, Value, frontend_metrics
from lbbench.results.atomic import replace_atomically, write_text_atomically
from lbbench.results.uncertainty import Interval

# (label, how to read it) of what should match for a like-for-like comparison
LIKE_FOR_LIKE: tuple[tuple[str, Callable[[Results], object]], ...] = (
    ("config", lambda r: r.name),
    ("seed", lambda r: r.metadata.get("seed")),
    ("duration per phase (s)", lambda r: r.duration_s),
    ("rates (rps)", lambda r: list(r.rates)),
    ("host", lambda r: r.metadata.get("hostname")),
    ("CPUs", lambda r: r.metadata.get("cpu_count")),
    ("lbbench version", lambda r: r.metadata.get("lbbench_version")),
    ("python", lambda r: r.metadata.get("python")),
)


@dataclass(frozen=True)
class Row:
    metric: Metric
    a: Value
    b: Value

    @property
    def delta(self) -> Value:
        if not self.metric.has_delta or self.a is None or self.b is None:
            return None
        d = self.b - self.a
        return None if math.isnan(d) else d

    @property
    def delta_pct(self) -> Value:
        d = self.delta
        if d is None or self.a is None or self.a == 0 or math.isinf(self.a) or math.isinf(d):
            return None
        return 100.0 * d / abs(self.a)


@dataclass(frozen=True)
class FrontendComparison:
    name: str
    a: FrontendStats | None
    b: FrontendStats | None
    rows: tuple[Row, ...]


@dataclass(frozen=True)
class Comparison:
    a: Results
    b: Results
    frontends: tuple[FrontendComparison, ...]
    notes: tuple[str, ...]


def _raw_schema(folder: Path) -> object:
    try:
        return json.loads((folder / "summary.json").read_text()).get("schema")
    except (OSError, ValueError, AttributeError):
        return None  # load_results says what is wrong with it


def compare(a_dir: Path, b_dir: Path) -> Comparison:
    sa, sb = _raw_schema(a_dir), _raw_schema(b_dir)
    if sa is not None and sb is not None and sa != sb:
        raise UserError(
            f"cannot compare results of different schemas: {a_dir} has schema {sa!r}, "
            f"{b_dir} has schema {sb!r}"
        )
    a, b = load_results(a_dir), load_results(b_dir)
    names = list(dict.fromkeys([f.name for f in a.frontends] + [f.name for f in b.frontends]))
    return Comparison(
        a, b, tuple(_frontend(n, a.frontend(n), b.frontend(n)) for n in names), tuple(notes(a, b))
    )


def _frontend(name: str, fa: FrontendStats | None, fb: FrontendStats | None) -> FrontendComparison:
    present = [f for f in (fa, fb) if f is not None]
    rows = tuple(
        Row(m, m.get(fa) if fa else None, m.get(fb) if fb else None) for m in frontend_metrics(present)
    )
    return FrontendComparison(name, fa, fb, rows)


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def config_differences(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """'config load.arrivals differs: A poisson, B constant', one per resolved config key that differs."""
    fa, fb = _flat(a), _flat(b)
    keys = [k for k in dict.fromkeys([*fa, *fb]) if k != "name" and fa.get(k) != fb.get(k)]
    return [f"config {k} differs: A {fa.get(k, 'absent')}, B {fb.get(k, 'absent')}" for k in keys]


def notes(a: Results, b: Results) -> list[str]:
    out = []
    for label, get in LIKE_FOR_LIKE:
        va, vb = get(a), get(b)
        if va != vb:
            out.append(f"{label} differs: A {va}, B {vb}")
    out += config_differences(a.config, b.config)
    for r, tag in ((a, "A"), (b, "B")):
        if not r.complete:
            out.append(f"{tag} ({r.folder.name}) was cut short (complete: false)")
    only_a = [f.name for f in a.frontends if b.frontend(f.name) is None]
    only_b = [f.name for f in b.frontends if a.frontend(f.name) is None]
    if only_a:
        out.append(f"only in A: {', '.join(only_a)}")
    if only_b:
        out.append(f"only in B: {', '.join(only_b)}")
    return out


# -- output -------------------------------------------------------------------------------------------
def _signed(m: Metric, d: Value) -> str:
    if d is None:
        return "–"
    text = m.fmt(abs(d))
    return text if d == 0 else ("+" if d > 0 else "−") + text


def _pct(p: Value) -> str:
    return "–" if p is None else f"{p:+.1f}%".replace("-", "−")


def _ci(f: FrontendStats | None, key: str) -> Interval | None:
    stat = key.removeprefix("latency_s.")
    return f.latency_ci.get(stat) if f is not None and key.startswith("latency_s.") else None


def _cell(r: Row, f: FrontendStats | None, v: Value) -> str:
    if f is None:
        return "absent"
    iv = _ci(f, r.metric.key)
    return r.metric.fmt(v) + (f" [{r.metric.fmt(max(0.0, iv.lo))}, {r.metric.fmt(iv.hi)}]" if iv else "")


def worse(c: Comparison, pct: float) -> list[str]:
    """Metrics where B is worse than A by more than `pct` percent, beyond their 95% intervals when known.

    A lower-is-better metric that was 0 in A and is not in B (errors, lost) is worse whatever `pct`.
    """
    out = []
    for fc in c.frontends:
        if fc.a is None or fc.b is None:
            continue
        for r in fc.rows:
            if r.metric.lower_is_better is not True or r.a is None or r.b is None or r.metric.key.startswith("cpu_s"):
                continue
            ia, ib = _ci(fc.a, r.metric.key), _ci(fc.b, r.metric.key)
            if ia is not None and ib is not None and ib.lo <= ia.hi:
                continue  # the intervals overlap: not a difference this run length can show
            grew = r.a == 0 and r.b > 0 and r.metric.key.startswith(("errors", "lost"))
            if grew or (r.delta_pct is not None and r.delta_pct > pct):
                out.append(f"{fc.name} {r.metric.label}: {r.metric.fmt(r.a)} -> {r.metric.fmt(r.b)} "
                           f"({_pct(r.delta_pct)})")
    return out


def table(fc: FrontendComparison) -> Table:
    rows = tuple(
        (
            r.metric.label,
            _cell(r, fc.a, r.a),
            _cell(r, fc.b, r.b),
            _signed(r.metric, r.delta),
            _pct(r.delta_pct),
        )
        for r in fc.rows
    )
    return Table(
        (fc.name, "A", "B", "Δ (B − A)", "Δ %"),
        rows,
        caption="Latency in ms (successful requests, from the intended send time) [95% interval, batch means]; "
        "Δ % relative to A.",
    )


def _json_num(v: Value) -> float | None:
    return None if v is None or math.isnan(v) or math.isinf(v) else v


def _side(r: Results) -> dict[str, Any]:
    return {
        "folder": str(r.folder),
        "config": r.name,
        "started_utc": r.metadata.get("started_utc"),
        "complete": r.complete,
        "seed": r.metadata.get("seed"),
        "rates_rps": list(r.rates),
    }


def to_json(c: Comparison) -> dict[str, Any]:
    """Values in the metrics' own units (latency in seconds).

    null where absent, undefined, or never (a recovery that did not happen).
    """
    return {
        "schema": c.a.summary.get("schema"),
        "a": _side(c.a),
        "b": _side(c.b),
        "notes": list(c.notes),
        "frontends": {
            fc.name: {
                "in": [tag for tag, f in (("a", fc.a), ("b", fc.b)) if f is not None],
                "metrics": {
                    r.metric.key: {
                        "label": r.metric.label.strip(),
                        "a": _json_num(r.a),
                        "b": _json_num(r.b),
                        "delta": _json_num(r.delta),
                        "delta_pct": _json_num(r.delta_pct),
                    }
                    for r in fc.rows
                },
            }
            for fc in c.frontends
        },
    }


def to_markdown(c: Comparison, cdf: Path | None) -> str:
    from lbbench.report.markdown import table as md_table

    lines = [
        "# lbbench compare",
        "",
        f"- A: `{c.a.folder}` ({c.a.name}, {c.a.metadata.get('started_utc', '?')})",
        f"- B: `{c.b.folder}` ({c.b.name}, {c.b.metadata.get('started_utc', '?')})",
        "",
    ]
    if c.notes:
        lines += ["Not like for like:", "", *(f"- {n}" for n in c.notes), ""]
    for fc in c.frontends:
        lines += [f"## {fc.name}", "", md_table(table(fc)), ""]
    if cdf is not None:
        lines += ["## Latency CDF", "", f"![latency CDF, A solid, B dashed]({cdf.name})", ""]
    return "\n".join(lines)


def cdf_plot(c: Comparison, path: Path) -> Path | None:
    from lbbench.report.plotkit import colors, draw_cdf, new_figure, ok_latencies

    names = [fc.name for fc in c.frontends]
    color = colors(names)
    curves = []
    for tag, r, style in (("A", c.a, "-"), ("B", c.b, "--")):
        for name in names:
            if r.frontend(name) is not None:
                curves.append((f"{tag}: {name}", ok_latencies(r, name), color[name], style))
    if not any(lat.size for _, lat, _, _ in curves):
        return None
    fig, axes = new_figure(1, 2, height=3.6, sharex=False, top_in=0.7)
    draw_cdf(axes, curves)
    fig.suptitle(f"A (solid): {c.a.folder.name}    B (dashed): {c.b.folder.name}", fontsize=10, y=0.98)
    path.parent.mkdir(parents=True, exist_ok=True)
    return replace_atomically(path, lambda tmp: fig.savefig(tmp, format="png"))


@dataclass(frozen=True)
class ComparePaths:
    markdown: Path
    json: Path
    cdf: Path | None


def write_compare(c: Comparison, out: Path) -> ComparePaths:
    out.mkdir(parents=True, exist_ok=True)
    cdf = cdf_plot(c, out / "latency_cdf.png")
    md = write_text_atomically(out / "compare.md", to_markdown(c, cdf))
    js = write_text_atomically(out / "compare.json", json.dumps(to_json(c), indent=2) + "\n")
    return ComparePaths(md, js, cdf)


def default_out(a: Path, b: Path) -> Path:
    return Path.cwd() / f"compare-{a.resolve().name}-vs-{b.resolve().name}"
