"""A generator part on stdout: the armored block a load Job's pod prints, and reading it back.

A part is the folder `lbbench load --out DIR` writes (summary.json + requests.parquet). In a
Job pod, `lbbench k8s pack DIR --frontend F --repeat R` prints it so that `kubectl logs`
collects it with no volume to mount. The format (version 1):

    -----BEGIN LBBENCH PART-----
    {"format": "lbbench.part/1", "frontend": F, "repeat": R, "part_index": I, "part_count": N,
     "bytes": B, "sha256": H}                          <- one line of JSON
    H4sIAAAAAAAC/+y9...                                <- base64 of a tar.gz, 76 characters a line
    -----END LBBENCH PART-----

The tar.gz holds exactly summary.json and requests.parquet; B and H are the length and SHA-256
of the decoded tar.gz, so a log cut short (kubelet rotates container logs, 10 MiB by default)
is detected instead of merged. Lines may carry a common prefix (`kubectl logs --prefix`); blocks
of several pods in one file are told apart by it. Other lines are ignored.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from lbbench.errors import UserError

FORMAT = "lbbench.part/1"
BEGIN = "-----BEGIN LBBENCH PART-----"
END = "-----END LBBENCH PART-----"
MEMBERS = ("summary.json", "requests.parquet")
LINE = 76


@dataclass(frozen=True)
class PartFiles:
    """One part as read: where from, its label (frontend, repeat) and the two files' bytes."""

    source: str
    header: dict[str, Any]
    files: dict[str, bytes]


def part_of(summary: dict[str, Any]) -> tuple[int, int]:
    """(index, count) of a part from its summary.json spec; a run without --part is part 0 of 1."""
    spec = summary.get("spec") or {}
    return int(spec.get("part_index", 0)), int(spec.get("part_count", 1))


def pack(folder: Path, frontend: str, repeat: int, out: TextIO) -> None:
    """Print `folder` (written by `lbbench load --out`) as one armored block."""
    files = read_folder(folder)
    summary = json.loads(files["summary.json"])
    index, count = part_of(summary)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name in MEMBERS:
            info = tarfile.TarInfo(name)
            info.size = len(files[name])
            tar.addfile(info, io.BytesIO(files[name]))
    payload = buf.getvalue()
    header = {"format": FORMAT, "frontend": frontend, "repeat": repeat, "part_index": index, "part_count": count,
              "bytes": len(payload), "sha256": hashlib.sha256(payload).hexdigest()}
    text = base64.b64encode(payload).decode("ascii")
    out.write(BEGIN + "\n" + json.dumps(header) + "\n")
    for i in range(0, len(text), LINE):
        out.write(text[i:i + LINE] + "\n")
    out.write(END + "\n")
    out.flush()


def read_folder(folder: Path) -> dict[str, bytes]:
    if not folder.is_dir():
        raise UserError(f"{folder}: not a folder (expected one written by 'lbbench load --out')")
    files = {}
    for name in MEMBERS:
        path = folder / name
        if not path.is_file():
            raise UserError(f"{folder}: no {name} (expected a folder written by 'lbbench load --out')")
        files[name] = path.read_bytes()
    return files


def read_parts(path: Path) -> list[PartFiles]:
    """A part folder (no label: the caller's default front end, repeat 0), or every armored block of a log file."""
    if path.is_dir():
        return [PartFiles(str(path), {}, read_folder(path))]
    try:
        text = path.read_text(errors="replace")
    except OSError as e:
        raise UserError(f"{path}: cannot read: {e.strerror or e}") from None
    blocks = _blocks(text, str(path))
    if not blocks:
        raise UserError(f"{path}: no '{BEGIN}' block (expected the log of a load Job pod, or a part folder)")
    return [_decode(lines, f"{path} block {n + 1}") for n, lines in enumerate(blocks)]


def _blocks(text: str, where: str) -> list[list[str]]:
    """The lines inside each BEGIN..END block, demultiplexed by line prefix."""
    open_blocks: dict[str, list[str]] = {}
    done: list[list[str]] = []
    for line in text.splitlines():
        at = line.find(BEGIN)
        if at >= 0:
            open_blocks[line[:at]] = []
            continue
        for prefix in sorted(open_blocks, key=len, reverse=True):  # "" (no prefix) matches last
            lines = open_blocks[prefix]
            if line.startswith(prefix):
                rest = line[len(prefix):].strip()
                if rest == END:
                    done.append(lines)
                    del open_blocks[prefix]
                else:
                    lines.append(rest)
                break
    if open_blocks:
        raise UserError(f"{where}: a part block has no END line: the log was cut short (kubelet rotates container "
                        "logs at 10 MiB by default; use more parts or fewer requests per part)")
    return done


def _decode(lines: list[str], where: str) -> PartFiles:
    try:
        header = json.loads(lines[0])
        payload = base64.b64decode("".join(lines[1:]), validate=True)
    except (IndexError, ValueError) as e:
        raise UserError(f"{where}: not a valid part block: {e}") from None
    if header.get("format") != FORMAT:
        raise UserError(f"{where}: format {header.get('format')!r}; this lbbench reads {FORMAT}")
    if len(payload) != header.get("bytes") or hashlib.sha256(payload).hexdigest() != header.get("sha256"):
        raise UserError(f"{where}: the part's checksum does not match: the log is damaged or incomplete")
    files: dict[str, bytes] = {}
    with tarfile.open(fileobj=io.BytesIO(payload), mode="r:gz") as tar:
        for member in tar.getmembers():
            if member.name in MEMBERS and member.isfile():
                f = tar.extractfile(member)
                if f is not None:
                    files[member.name] = f.read()
    missing = [n for n in MEMBERS if n not in files]
    if missing:
        raise UserError(f"{where}: the part lacks {', '.join(missing)}")
    return PartFiles(where, header, files)
