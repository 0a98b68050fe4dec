"""Replace a file all at once: write a temporary name in the same folder, flush it to disk, rename.

A reader (or a later `lbbench report`) then sees either the previous complete file or the new
complete one, never a truncated file that looks valid: a full disk or a crash mid-write leaves
only the hidden temporary, which is removed when the write fails.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path


def temporary_name(path: Path) -> Path:
    """Hidden, in the same folder (a rename across file systems is not atomic), unique per process."""
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def replace_atomically(path: Path, write: Callable[[Path], object]) -> Path:
    """Call `write(tmp)` to fill a temporary file, then rename it to `path`. Returns `path`.

    Writers that infer the format from the file name (matplotlib) must be told the format.
    """
    tmp = temporary_name(path)
    try:
        write(tmp)
        _flush(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_text_atomically(path: Path, text: str) -> Path:
    return replace_atomically(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def _flush(path: Path) -> None:
    """fsync before the rename: otherwise a power cut can leave the new name on an empty file."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
