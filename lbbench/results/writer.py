"""The one writer of a results folder: `lbbench run` (after every phase) and `lbbench merge` call it.

Both build a `FolderContents` (rows, events, time series, the summary from `summary_document`)
and hand it to `write_folder`, so the two kinds of folder hold the same files and the same keys.

Nothing measured is lost to a failed write: summary.json goes first (it is small and says what
the rest holds; it says `complete: true` only once every other file is written), every file is
replaced atomically (lbbench.results.atomic), and when a file cannot be written the others are
still tried, its previous version stays as it was, and summary.json is rewritten with
`complete: false` and the failures in `write_errors`.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from lbbench.errors import UserError
from lbbench.results.atomic import replace_atomically, write_text_atomically
from lbbench.results.files import SCHEMA, json_text

Writer = Callable[[Path], object]  # fills the temporary file it is given


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
    """Write the folder, summary first; returns the files that could not be written (and keeps going).

    The first summary.json says `complete: false`; only once every other file is written is it
    rewritten with the run's own verdict, so a folder never claims to be complete over a stale file.
    """
    summary = contents.summary
    first = {**summary, "complete": False}
    failures = [f for name, write in _files(contents, first) for f in _try(out / name, write)]
    if contents.config_file is not None and not (out / "config.toml").exists():
        config_file = contents.config_file
        failures += _try(out / "config.toml", lambda tmp: shutil.copyfile(config_file, tmp))
    final = {**summary, "complete": False, "write_errors": [str(f) for f in failures]} if failures else summary
    if final != first:
        late = _try(out / "summary.json", _json(final))
        failures += late if not failures else []  # already failing: the first summary says incomplete
    return failures


def record_checks(out: Path, checks: list[dict[str, Any]]) -> None:
    """Put `checks` (every result of the latest evaluation, pass or fail) into an existing summary.json.

    The report evaluates checks on a finished folder; the summary stays this module's to write, atomically.
    """
    path = out / "summary.json"
    data = json.loads(path.read_text())
    data["checks"] = checks
    write_text_atomically(path, json_text(data))


def _files(c: FolderContents, summary: dict[str, Any]) -> list[tuple[str, Writer]]:
    """(name, write to a path), in the order they are written: small and most telling first."""
    return [
        ("summary.json", _json(summary)),
        ("events.csv", lambda tmp: c.events.to_csv(tmp, index=False, float_format="%.6f")),
        ("timeseries.parquet", lambda tmp: c.timeseries.to_parquet(tmp, index=False)),
        ("requests.parquet", lambda tmp: c.rows.to_parquet(tmp, index=False)),
    ]


def _json(data: dict[str, Any]) -> Writer:
    return lambda tmp: tmp.write_text(json_text(data))


def _try(path: Path, write: Writer) -> list[WriteFailure]:
    """[] when written; else the one failure (the file's previous version is left as it was)."""
    try:
        replace_atomically(path, write)
    except OSError as e:
        return [WriteFailure(path, e.strerror or str(e))]
    return []
