"""The private user+net namespace: lo up, marker set, same pid, dies with the outer parent."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from lbbench.system.netns import NETNS_ENV, in_private_netns, netns_argv, netns_unavailable_reason
from lbbench.system.procs import Supervisor

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(netns_unavailable_reason() is not None,
                       reason=f"no private user+net namespace with nft: {netns_unavailable_reason()}"),
]

INSIDE = """
import json, os, socket
from lbbench.system.netns import in_private_netns
srv = socket.create_server(("127.45.6.7", 0))
with socket.create_connection(srv.getsockname(), timeout=2):
    pass
srv.close()
print(json.dumps({"pid": os.getpid(), "private": in_private_netns(), "ns": os.readlink("/proc/self/ns/net"),
                  "links": sorted(name for _, name in socket.if_nameindex()), "uid": os.getuid()}))
"""


def test_wrapped_command_runs_in_a_fresh_namespace_with_lo_up(supervisor: Supervisor) -> None:
    child = supervisor.spawn("ns", netns_argv([sys.executable, "-c", INSIDE]), stdout=subprocess.PIPE)
    out, _ = child.popen.communicate(timeout=30)
    assert child.popen.returncode == 0
    inside = json.loads(out)
    assert inside["pid"] == child.pid  # unshare and the helper exec: the supervisor owns the real process
    assert inside["private"] is True
    assert inside["ns"] != os.readlink("/proc/self/ns/net")
    assert inside["links"] == ["lo"]  # nothing of the host's network
    assert inside["uid"] == 0  # mapped root: nft may write rules here, and only here


def test_marker_alone_does_not_make_a_private_namespace(monkeypatch: pytest.MonkeyPatch) -> None:
    assert in_private_netns() is False
    monkeypatch.setenv(NETNS_ENV, "net:[1]")  # leaked or forged
    assert in_private_netns() is False
    monkeypatch.setenv(NETNS_ENV, os.readlink("/proc/self/ns/net"))
    assert in_private_netns() is True  # the marker is the namespace identity, nothing more


PARENT = """
import sys, time
from lbbench.system.netns import netns_argv
from lbbench.system.procs import Supervisor
sup = Supervisor()
child = sup.spawn("sleeper", netns_argv([sys.executable, "-c", "import time; time.sleep(120)"]))
print(child.pid, flush=True)
time.sleep(120)
"""


def _gone(pid: int) -> bool:
    try:
        return bool(psutil.Process(pid).status() == psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return True


def test_processes_inside_die_with_the_outer_parent() -> None:
    parent = subprocess.Popen([sys.executable, "-c", PARENT], stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
    try:
        assert parent.stdout is not None
        inner = int(parent.stdout.readline())
        assert psutil.pid_exists(inner)
        parent.send_signal(signal.SIGKILL)
        parent.wait(5)
        deadline = time.monotonic() + 10
        while not _gone(inner):
            assert time.monotonic() < deadline, "the process in the namespace outlived its parent"
            time.sleep(0.05)
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        if parent.stdout is not None:
            parent.stdout.close()


def test_empty_command_is_refused() -> None:
    with pytest.raises(ValueError):
        netns_argv([])
