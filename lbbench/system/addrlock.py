"""Address blocks claimed exclusively, for runs that share the host's network namespace.

Inside lbbench's private namespace a run owns all of 127.0.0.0/8. Without one (`--no-netns`,
or no user namespaces here) two runs of the same config would bind the same loopback
addresses and could measure each other's pods. Each /16 a run uses is therefore claimed
with an ``flock`` on a lock file named after it; a second run waits until the first has
released it (the kernel drops an flock when its holder dies, however it dies).
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

_RUN_DIR = Path("/run/lbbench")


def lock_dir() -> Path:
    """/run/lbbench when it can be written (shared by every user of the host), else the temp dir."""
    for d in (_RUN_DIR, Path(tempfile.gettempdir()) / "lbbench-locks"):
        with contextlib.suppress(OSError):
            d.mkdir(mode=0o1777, parents=True, exist_ok=True)
            if os.access(d, os.W_OK):
                return d
    raise OSError("no writable folder for address-block locks (/run/lbbench or the temp dir)")


def blocks_of(addresses: Iterable[str]) -> list[str]:
    """The /16 blocks covering `addresses` (IPs or networks), sorted: the locking order."""
    nets = {ipaddress.ip_network(a if "/" in a else f"{a}/32", strict=False) for a in addresses}
    out: set[ipaddress.IPv4Network] = set()
    for net in nets:
        assert isinstance(net, ipaddress.IPv4Network)
        if net.prefixlen >= 16:
            out.add(net.supernet(new_prefix=16))
        else:
            out.update(net.subnets(new_prefix=16))
    return [str(n) for n in sorted(out)]


@contextlib.contextmanager
def claim_blocks(blocks: Iterable[str], on_wait: Callable[[str, str], None] | None = None,
                 directory: Path | None = None) -> Iterator[list[str]]:
    """Hold an exclusive lock on every block (sorted order: no deadlock between two runs).

    `on_wait(block, holder)` is called once before waiting for a block another run holds.
    """
    folder = directory or lock_dir()
    held: list[int] = []
    names = sorted(blocks)
    try:
        for block in names:
            path = folder / f"addr-{block.replace('/', '_')}.lock"
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
            held.append(fd)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if on_wait is not None:
                    on_wait(block, os.pread(fd, 64, 0).decode(errors="replace").strip() or "another run")
                fcntl.flock(fd, fcntl.LOCK_EX)
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"lbbench pid {os.getpid()}\n".encode(), 0)
        yield names
    finally:
        for fd in held:
            os.close(fd)  # closing releases the flock
