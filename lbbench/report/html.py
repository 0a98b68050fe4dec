"""Render a :class:`Document` as ONE self-contained HTML file: inline CSS, plots as base64 data URIs.

No scripts, no fonts, no links to anything: it opens offline and survives being mailed around.
"""

from __future__ import annotations

import base64
from html import escape
from pathlib import Path

from lbbench.report.doc import Banner, Block, Bullets, Document, Image, Paragraph, Table

CSS = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: #1d2330; margin: 0;
       background: #f6f7f9; }
main { max-width: 1100px; margin: 0 auto; padding: 14px 28px 60px; background: #fff; }
h1 { font-size: 26px; margin: 0 0 4px; }
h2 { font-size: 20px; margin: 22px 0 8px; border-bottom: 1px solid #dde1e7; padding-bottom: 4px; }
h3 { font-size: 16px; margin: 22px 0 6px; }
.sub { color: #5b6475; margin: 0 0 16px; }
.banner { background: #fff3cd; border: 2px solid #e0a800; color: #5c4400; padding: 10px 14px;
          border-radius: 6px; font-weight: 600; margin: 8px 0; font-size: 14px; }
table { border-collapse: collapse; margin: 8px 0 4px; font-variant-numeric: tabular-nums; }
th, td { padding: 4px 10px; border-bottom: 1px solid #e6e9ee; }
th { background: #eef1f5; text-align: left; }
td.r, th.r { text-align: right; }
td.c, th.c { text-align: center; }
tr:hover td { background: #f8f9fb; }
.caption { color: #5b6475; font-size: 13px; margin: 2px 0 12px; }
figure { margin: 18px 0; }
figure img { max-width: 100%; border: 1px solid #e6e9ee; }
figcaption { color: #5b6475; font-size: 13px; }
ul { margin: 6px 0; padding-left: 22px; }
.verdict { font-size: 15px; background: #eef6ee; border-left: 5px solid #2a7d2a; padding: 10px 14px; margin: 8px 0; }
details { margin: 10px 0; border: 1px solid #dde1e7; border-radius: 6px; padding: 4px 12px; }
summary { font-size: 17px; font-weight: 600; cursor: pointer; padding: 6px 0; }
.scroll { overflow-x: auto; max-width: 100%; }
li { margin: 3px 0; }
"""


def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def table(t: Table) -> str:
    align = t.alignment()
    head = "".join(f'<th class="{a}">{escape(h)}</th>' for h, a in zip(t.headers, align, strict=True))
    body = "".join(
        "<tr>"
        + "".join(f'<td class="{a}">{escape(c)}</td>' for c, a in zip(row, align, strict=True))
        + "</tr>\n"
        for row in t.rows
    )
    caption = f'<div class="caption">{escape(t.caption)}</div>' if t.caption else ""
    # a wide table scrolls inside its own box: the page never scrolls sideways
    return f'<div class="scroll"><table><thead><tr>{head}</tr></thead>\n<tbody>\n{body}</tbody></table></div>{caption}'



def _block(b: Block) -> str:
    if isinstance(b, Table):
        return table(b)
    if isinstance(b, Paragraph):
        return f'<p class="verdict">{escape(b.text)}</p>' if b.verdict else f"<p>{escape(b.text)}</p>"
    if isinstance(b, Bullets):
        return "<ul>" + "".join(f"<li>{escape(i)}</li>" for i in b.items) + "</ul>"
    if isinstance(b, Banner):
        return f'<div class="banner">{escape(b.text)}</div>'
    if isinstance(b, Image):
        caption = f"<figcaption>{escape(b.caption)}</figcaption>" if b.caption else ""
        return (
            f'<figure><h3>{escape(b.title)}</h3><img alt="{escape(b.title)}" '
            f'src="{_data_uri(b.path)}">{caption}</figure>'
        )
    raise TypeError(f"unknown block {type(b).__name__}")


def render(doc: Document) -> str:
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{escape(doc.title)}</title><style>{CSS}</style></head><body><main>",
        f"<h1>{escape(doc.title)}</h1>",
        f'<p class="sub">{escape(doc.subtitle)}</p>',
    ]
    parts += [_block(b) for b in doc.banners]
    for section in doc.sections:
        if section.folded:
            parts.append(f"<details><summary>{escape(section.title)}</summary>")
            parts += [_block(b) for b in section.blocks]
            parts.append("</details>")
            continue
        parts.append(f"<h2>{escape(section.title)}</h2>")
        parts += [_block(b) for b in section.blocks]
    parts.append("</main></body></html>")
    return "\n".join(parts) + "\n"
