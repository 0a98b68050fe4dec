"""lbbench's private user+network namespace, where kernel front ends may touch netfilter.

Kernel rules are never written to the host: `lbbench run` re-executes itself through
:func:`netns_argv`, i.e. ``unshare --user --map-root-user --net`` (no root needed; as real root
``unshare --net`` alone, so that BPF loading, refused in a user namespace, still works), then
``python -m lbbench.system.netns exec`` brings ``lo`` up, marks the environment and execs the real
command. unshare and the exec keep the pid, so the supervisor that spawned the wrapper
still owns (and kills) the process; inside, nothing but ``lo`` exists, and the namespace
with its rules vanishes with its last process.

The marker holds the namespace's identity (``net:[inode]``), so a marker leaked into a
process outside that namespace is not mistaken for it.
"""

from __future__ import annotations

import fcntl
import functools
import os
import shutil
import socket
import struct
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

NETNS_ENV = "LBBENCH_NETNS"
_SBIN = ("/usr/sbin", "/sbin", "/usr/local/sbin")  # often missing from a user's PATH
_SIOCGIFFLAGS = 0x8913
_SIOCSIFFLAGS = 0x8914
_IFF_UP = 0x1


def find_tool(name: str) -> str | None:
    """Path of a tool on PATH or in the sbin directories."""
    return shutil.which(name) or shutil.which(name, path=os.pathsep.join(_SBIN))


def _current_netns() -> str:
    try:
        return os.readlink("/proc/self/ns/net")
    except OSError:
        return ""


def in_private_netns() -> bool:
    """True inside the namespace that :func:`netns_argv` created for this process tree."""
    marker = os.environ.get(NETNS_ENV, "")
    return bool(marker) and marker == _current_netns()


@functools.cache
def namespace_unavailable_reason() -> str | None:
    """None if a private user+net namespace can be made here, else why not (probed once).

    Every `lbbench run` phase runs in one when it can: runs never see each other's pods, and
    network faults live (and die) with the namespace's own netfilter.
    """
    unshare = find_tool("unshare")
    if unshare is None:
        return "unshare (util-linux) is not installed"
    return _probe([unshare, *unshare_flags(), "--", sys.executable, "-c", ""])


@functools.cache
def netns_unavailable_reason() -> str | None:
    """None if a private user+net namespace with nftables works here, else why not (probed once)."""
    if (why := namespace_unavailable_reason()) is not None:
        return why
    nft = find_tool("nft")
    if nft is None:
        return "nft (nftables) is not installed"
    unshare = find_tool("unshare")
    assert unshare is not None
    return _probe([unshare, *unshare_flags(), "--", nft, "list", "ruleset"])


def _probe(argv: list[str]) -> str | None:
    from lbbench.system.procs import Supervisor

    what = " ".join(os.path.basename(a) for a in argv[:5])
    with Supervisor() as sup:
        child = sup.spawn("netns-probe", argv, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            _, err = child.popen.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            child.stop_sync(0.5)
            return f"probing '{what}' timed out"
    if child.popen.returncode != 0:
        detail = err.decode(errors="replace").strip().splitlines()
        why = detail[-1] if detail else f"exit status {child.popen.returncode}"
        return f"'{what}' failed (user namespaces disabled?): {why}"
    return None


def real_root() -> bool:
    """Root in the initial user namespace: a private netns needs no user namespace then."""
    try:
        return os.geteuid() == 0 and Path("/proc/self/uid_map").read_text().split() == ["0", "0", "4294967295"]
    except OSError:
        return False


def unshare_flags() -> list[str]:
    """``--net`` alone as real root (BPF, which a user namespace refuses, keeps working inside,
    e.g. ebpf-socketlb's programs); ``--user --map-root-user --net`` for anyone else."""
    return ["--net"] if real_root() else ["--user", "--map-root-user", "--net"]


def netns_argv(argv: Sequence[str]) -> list[str]:
    """Wrap `argv` to run in a fresh user+net namespace with `lo` up and the marker set.

    unshare and the helper both exec, so the wrapped command keeps the pid the caller's
    Supervisor spawned (and dies with it).
    """
    if not argv:
        raise ValueError("netns_argv needs a command")
    unshare = find_tool("unshare")
    if unshare is None:
        raise RuntimeError("unshare (util-linux) is not installed")
    return [unshare, *unshare_flags(), "--",
            sys.executable, "-m", "lbbench.system.netns", "exec", "--", *argv]


def rerun_inside(name: str, out: str) -> int:
    """Run this very lbbench command again inside a private namespace, with `--out` fixed.

    Signals to this process are forwarded; the exit code is the inner command's. The inner
    process joins a guarded process group, so it dies with this one however this one dies.
    """
    import signal

    from lbbench.system.procs import Supervisor, lbbench_argv

    argv = list(sys.argv[1:])
    if "--out" not in argv:
        argv += ["--out", out]
    with Supervisor() as sup:
        child = sup.spawn(name, netns_argv(lbbench_argv(*argv)), stdin=None, stdout=None)

        def forward(sig: int, _frame: object) -> None:
            child.signal(sig)

        signal.signal(signal.SIGINT, forward)
        signal.signal(signal.SIGTERM, forward)
        return child.popen.wait()


def bring_up_loopback() -> None:
    """`ip link set lo up`, without needing iproute2."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        req = struct.pack("16sh", b"lo", 0)
        flags = struct.unpack("16sh", fcntl.ioctl(s.fileno(), _SIOCGIFFLAGS, req))[1]
        fcntl.ioctl(s.fileno(), _SIOCSIFFLAGS, struct.pack("16sh", b"lo", flags | _IFF_UP))


def _exec_inside(argv: Sequence[str]) -> int:
    bring_up_loopback()
    env = dict(os.environ)
    env[NETNS_ENV] = _current_netns()
    # nft and friends live in sbin; inside the namespace we are root, so make them findable.
    env["PATH"] = os.pathsep.join([env.get("PATH", ""), *_SBIN]).strip(os.pathsep)
    try:
        os.execvpe(argv[0], list(argv), env)
    except OSError as e:
        print(f"lbbench.system.netns: cannot exec {argv[0]!r}: {e}", file=sys.stderr)
        return 127


def main(args: Sequence[str]) -> int:
    if len(args) < 2 or args[0] != "exec":
        print("usage: python -m lbbench.system.netns exec -- COMMAND [ARG...]  (run through netns_argv)",
              file=sys.stderr)
        return 2
    rest = list(args[1:])
    if rest and rest[0] == "--":
        rest = rest[1:]
    if not rest:
        print("lbbench.system.netns: no command given", file=sys.stderr)
        return 2
    return _exec_inside(rest)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
