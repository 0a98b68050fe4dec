"""Render a :class:`Document` as GitHub-flavoured Markdown; plots referenced as relative `plots/*.png`."""

from __future__ import annotations

from pathlib import Path

from lbbench.report.doc import Banner, Block, Bullets, Document, Image, Paragraph, Table


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def table(t: Table) -> str:
    sep = {"l": ":---", "r": "---:", "c": ":---:"}
    lines = [
        "| " + " | ".join(_cell(h) for h in t.headers) + " |",
        "| " + " | ".join(sep.get(a, "---") for a in t.alignment()) + " |",
    ]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in t.rows]
    if t.caption:
        lines += ["", f"*{t.caption}*"]
    return "\n".join(lines)


def _block(b: Block, base: Path) -> str:
    if isinstance(b, Table):
        return table(b)
    if isinstance(b, Paragraph):
        return f"**{b.text}**" if b.verdict else b.text
    if isinstance(b, Bullets):
        return "\n".join(f"- {item}" for item in b.items)
    if isinstance(b, Banner):
        return f"> **{b.text}**"
    if isinstance(b, Image):
        rel = b.path.relative_to(base) if b.path.is_relative_to(base) else b.path
        text = f"![{b.title}]({rel.as_posix()})"
        return text + (f"\n\n{b.caption}" if b.caption else "")
    raise TypeError(f"unknown block {type(b).__name__}")


def render(doc: Document, base: Path) -> str:
    """`base`: the folder the .md file is written to (image paths are made relative to it)."""
    out = [f"# {doc.title}", "", doc.subtitle, ""]
    for banner in doc.banners:
        out += [_block(banner, base), ""]
    for section in doc.sections:
        # GitHub renders <details> in Markdown; the blank lines let the Markdown inside render too
        out += [f"<details><summary><b>{section.title}</b></summary>", ""] if section.folded else [
            f"## {section.title}", ""]
        for b in section.blocks:
            out += [_block(b, base), ""]
        if section.folded:
            out += ["</details>", ""]
    return "\n".join(out).rstrip() + "\n"


def plain_table(t: Table) -> str:
    """An aligned plain-text table for the terminal."""
    rows = [t.headers, *t.rows]
    widths = [max(len(r[i]) for r in rows) for i in range(len(t.headers))]
    align = t.alignment()

    def line(cells: tuple[str, ...]) -> str:
        return "  ".join(
            c.rjust(w) if a == "r" else c.ljust(w) for c, w, a in zip(cells, widths, align, strict=True)
        ).rstrip()

    out = [line(t.headers), "  ".join("-" * w for w in widths)]
    out += [line(r) for r in t.rows]
    return "\n".join(out)
