"""Private scratch folders in the temp directory, and the sweep of those a killed run left behind.

A front end that needs files (HAProxy, nginx and httpd configs and logs, the l7-proxy's plan)
gets a folder `lbbench-<kind>-<owner pid>-<random>`, mode 0700, whose files are 0600: configs
and logs say which addresses and pods a run uses and stay the user's own. A run removes its
folders when it stops; one killed by SIGKILL cannot, so whoever makes a new folder first sweeps
the folders of dead owners: the user's own, of a known kind, whose pid no longer runs. A live
owner's folder is never touched (a reused pid only keeps a stale folder a while longer).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Literal

Kind = Literal["haproxy", "nginx", "httpd", "l7-proxy", "rules"]
KINDS: tuple[Kind, ...] = ("haproxy", "nginx", "httpd", "l7-proxy", "rules")
# mkdtemp appends 8 characters of [a-z0-9_].
_NAME = re.compile(r"lbbench-(" + "|".join(map(re.escape, KINDS)) + r")-([0-9]+)-[a-z0-9_]{8}")


def private_dir(kind: Kind, *, traversable: bool = False) -> Path:
    """A new folder only this user can enter (traversable: others may pass through it to a path
    they know, for proxy workers that switched to `nobody`; they still cannot list it)."""
    sweep_stale()
    path = Path(tempfile.mkdtemp(prefix=f"lbbench-{kind}-{os.getpid()}-"))  # mkdtemp: 0700
    if traversable:
        path.chmod(0o711)
    return path


def owner_pid(path: Path) -> int | None:
    """The pid in a scratch folder's name, or None when the name is not one of ours."""
    m = _NAME.fullmatch(path.name)
    return int(m.group(2)) if m else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: alive
    return True


def sweep_stale(directory: Path | None = None) -> list[Path]:
    """Remove the scratch folders of dead owners in `directory` (the temp dir); returns them."""
    root = Path(directory or tempfile.gettempdir())
    swept: list[Path] = []
    uid = os.getuid()
    try:
        entries = list(os.scandir(root))
    except OSError:
        return swept
    for entry in entries:
        pid = owner_pid(Path(entry.name))
        if pid is None or pid == os.getpid():
            continue
        with contextlib.suppress(OSError):
            st = entry.stat(follow_symlinks=False)
            if not entry.is_dir(follow_symlinks=False) or st.st_uid != uid or _alive(pid):
                continue
            shutil.rmtree(entry.path, ignore_errors=True)
            swept.append(Path(entry.path))
    return swept


def write_private(path: Path, text: str) -> None:
    """Write `text` to a file only this user can read (0600, whatever the umask)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    with open(fd, "w") as f:
        os.fchmod(fd, 0o600)  # an existing file keeps its mode through O_CREAT
        f.write(text)


def open_private(path: Path, append: bool = True) -> int:
    """A file descriptor on a 0600 file (for a child's output); the caller closes it."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | (os.O_APPEND if append else os.O_TRUNC)
    fd = os.open(path, flags, 0o600)
    os.fchmod(fd, 0o600)
    return fd
