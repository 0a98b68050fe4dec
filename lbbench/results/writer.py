"""The one writer of a results folder: `lbbench run` (after every phase) and `lbbench merge` call it.

Both build a `FolderContents` (rows, events, time series, the summary from `summary_document`)
and hand it to `write_folder`, so the two kinds of folder hold the same files and the same keys.

Nothing measured is lost to a failed write: summary.json goes first (it is small and says what
the rest holds), every file is replaced atomically (lbbench.results.atomic), and when a file
cannot be written the others are still tried, its previous version stays as it was, and
summary.json is rewritten with `complete: false` and the failures in `write_errors`.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from lbbench.errors import UserError
from lbbench.results.atomic import replace_atomically
from lbbench.results.files import SCHEMA, json_text


@dataclass(frozen=True)
class FolderContents:
    """Everything a results folder holds, in memory (see lbbench.results.files for the layout)."""

    summary: dict[str, Any]  # from summary_document
    rows: pd.DataFrame  # requests.parquet: one row per request, tagged with frontend, rate_rps, repeat
    events: pd.DataFrame  # events.csv
    timeseries: pd.DataFrame  # timeseries.parquet: 100 ms buckets per phase
    config_file: Path | None = None  # copied to config.toml (once: the file may change after the start)


@dataclass(frozen=True)
class WriteFailure:
    path: Path
    error: str

    def __str__(self) -> str:
        return f"{self.path}: {self.error}"


def writable_folder(out: Path, option: str = "--out") -> Path:
    """Create `out` if needed and prove a file can be written there, before anything is measured.

    A path that is a file, a folder on a read-only mount or in /proc: one line naming it (UserError).
    """
    if out.exists() and not out.is_dir():
        raise UserError(f"{option} {out}: exists and is not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".lbbench-probe-"):
            pass
    except OSError as e:
        raise UserError(f"{option} {out}: cannot write results there: {e.strerror or e}") from None
    return out


def summary_document(*, complete: bool, metadata: dict[str, Any], config: dict[str, Any],
                     phases: list[dict[str, Any]], frontends: dict[str, Any], skipped: dict[str, str],
                     notes: list[str]) -> dict[str, Any]:
    """summary.json (schema 1): every writer passes every section, so every folder has the same keys."""
    return {"schema": SCHEMA, "complete": complete, "metadata": metadata, "config": config, "phases": phases,
            "frontends": frontends, "skipped": skipped, "notes": notes, "write_errors": []}


def write_folder(out: Path, contents: FolderContents) -> list[WriteFailure]:
    """Write the folder, summary first; returns the files that could not be written (and keeps going)."""
    failures = [f for name, write in _files(contents) if (f := _try(out / name, write)) is not None]
    if contents.config_file is not None and not (out / "config.toml").exists():
        failure = _try(out / "config.toml", lambda tmp: shutil.copyfile(contents.config_file or "", tmp))
        failures += [failure] if failure is not None else []
    if failures:
        marked = {**contents.summary, "complete": False, "write_errors": [str(f) for f in failures]}
        _try(out / "summary.json", lambda tmp: tmp.write_text(json_text(marked)))
    return failures


def _files(c: FolderContents) -> list[tuple[str, Any]]:
    """(name, write to a path), in the order they are written: small and most telling first."""
    return [
        ("summary.json", lambda tmp: tmp.write_text(json_text(c.summary))),
        ("events.csv", lambda tmp: c.events.to_csv(tmp, index=False, float_format="%.6f")),
        ("timeseries.parquet", lambda tmp: c.timeseries.to_parquet(tmp, index=False)),
        ("requests.parquet", lambda tmp: c.rows.to_parquet(tmp, index=False)),
    ]


def _try(path: Path, write: Any) -> WriteFailure | None:
    try:
        replace_atomically(path, write)
    except OSError as e:
        return WriteFailure(path, e.strerror or str(e))
    return None
