"""Non-loopback targets are refused unless --allow-remote is given (for use inside a real cluster).

Nothing here sends a packet to a non-loopback address: only parsing and validation are exercised.
"""

from __future__ import annotations

import subprocess

import pytest

from lbbench.cli import build_parser
from lbbench.commands.load import build_spec
from lbbench.model.addresses import parse_hostport
from lbbench.system.procs import lbbench_argv

REMOTE = "http://10.96.0.10:8080/"  # a typical in-cluster ClusterIP; never contacted here


def test_load_refuses_remote_without_flag() -> None:
    proc = subprocess.run([*lbbench_argv("load", REMOTE, "--rate", "1", "--duration", "1s")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "127.0.0.0/8" in proc.stderr and "Traceback" not in proc.stderr


def test_allow_remote_lifts_only_the_loopback_rule() -> None:
    parser, _ = build_parser()
    args = parser.parse_args(["load", REMOTE, "--rate", "5", "--duration", "1s", "--allow-remote"])
    spec = build_spec(args)
    assert spec.target.host == "10.96.0.10" and spec.allow_remote
    with pytest.raises(ValueError, match=r"127\.0\.0\.0/8"):
        parse_hostport("10.0.0.1:80")
    assert parse_hostport("0.0.0.0:8080", allow_remote=True).port == 8080
    with pytest.raises(ValueError, match="expected an IP"):
        parse_hostport("not-an-ip:80", allow_remote=True)
