"""A tiny document model, rendered twice: to Markdown (markdown.py) and to self-contained HTML (html.py).

Builders produce blocks of plain data; renderers never compute a number, so the two reports can
never disagree.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Table:
    headers: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    # per column: "l" or "r"; default: first column left, the rest right (numbers)
    align: tuple[str, ...] = ()
    caption: str = ""

    def alignment(self) -> tuple[str, ...]:
        return self.align or ("l",) + ("r",) * (len(self.headers) - 1)


@dataclass(frozen=True)
class Paragraph:
    text: str
    verdict: bool = False  # the report's answer, set apart


@dataclass(frozen=True)
class Bullets:
    items: tuple[str, ...]


@dataclass(frozen=True)
class Banner:
    """A warning shown at the top, impossible to miss (e.g. the run was cut short)."""

    text: str


@dataclass(frozen=True)
class Image:
    path: Path  # a PNG under the results folder's plots/
    title: str
    caption: str = ""


Block = Table | Paragraph | Bullets | Banner | Image


@dataclass(frozen=True)
class Section:
    title: str
    blocks: tuple[Block, ...]
    folded: bool = False  # details a reader opens on demand (HTML <details>; also in GitHub Markdown)


@dataclass(frozen=True)
class Document:
    title: str
    subtitle: str
    banners: tuple[Banner, ...] = ()
    sections: tuple[Section, ...] = field(default_factory=tuple)
