"""`lbbench run`'s command line: every override is validated like the config, before anything starts."""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

import pytest
from helpers.paths import REPO

from lbbench.system.procs import lbbench_argv

QUICKSTART = REPO / "configs" / "quickstart.toml"


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(lbbench_argv("run", str(QUICKSTART), "--quiet", *args), capture_output=True, text=True,
                          timeout=60)


def assert_one_line(proc: subprocess.CompletedProcess[str], *expected: str) -> None:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    [line] = proc.stderr.strip().splitlines()
    for text in expected:
        assert text in line, line


@pytest.mark.parametrize(("args", "expected"), [
    (("--seed", "-1"), ("--seed:", "must be >= 0", "-1")),
    (("--frontends", "l7-proxy,l7-proxy"), ("--frontends:", "'l7-proxy' is listed twice")),
    (("--frontends", "l7-proxy,nope"), ("--frontends:", "unknown front end 'nope'")),
    (("--frontends", ","), ("--frontends:", "at least one front end")),
    (("--duration", "0s"), ("--duration:", "must be >= 0.1s")),
    (("--duration", "soon"), ("--duration:", "expected a duration")),
    (("--repeat", "0"), ("--repeat:", "must be >= 1")),
], ids=["seed", "duplicate-frontend", "unknown-frontend", "no-frontend", "zero-duration", "bad-duration",
        "repeat"])
def test_bad_override_is_one_line_before_anything_starts(tmp_path: Path, args: tuple[str, ...],
                                                       expected: tuple[str, ...]) -> None:
    out = tmp_path / "out"
    assert_one_line(run_cli("--out", str(out), *args), *expected)
    assert not out.exists()  # refused before the results folder (or any process) was made


def test_the_config_file_itself_is_checked_the_same_way(tmp_path: Path) -> None:
    config = tmp_path / "dup.toml"
    text = QUICKSTART.read_text()
    config.write_text(text.replace('frontends = ["userspace-dnat", "kernel-nftables", "l7-proxy"]',
                                   'frontends = ["l7-proxy", "l7-proxy"]'))
    assert config.read_text() != text
    proc = subprocess.run(lbbench_argv("run", str(config), "--quiet"), capture_output=True, text=True, timeout=60)
    assert_one_line(proc, str(config), "run.frontends[1]", "listed twice")


def test_a_clash_of_the_file_with_an_override_names_both(tmp_path: Path) -> None:
    """quickstart's first event is at 5 s: --duration 1s leaves it past the end of the run."""
    proc = run_cli("--out", str(tmp_path / "out"), "--duration", "1s")
    assert_one_line(proc, str(QUICKSTART), "events[0].at", "(with --duration 1s)")


def test_out_that_is_a_file_or_unwritable_is_refused(tmp_path: Path) -> None:
    a_file = tmp_path / "file"
    a_file.write_text("not a folder")
    assert_one_line(run_cli("--out", str(a_file)), f"--out {a_file}", "not a folder")
    assert a_file.read_text() == "not a folder"
    assert_one_line(run_cli("--out", "/proc/lbbench-results"), "--out /proc/lbbench-results", "cannot write")


def test_out_on_a_read_only_mount_is_refused(tmp_path: Path) -> None:
    """A folder that exists on a read-only mount (inside a private mount namespace: the host is untouched)."""
    ro = tmp_path / "ro"
    (ro / "existing").mkdir(parents=True)
    argv = shlex.join(lbbench_argv("run", str(QUICKSTART), "--quiet", "--out", str(ro / "existing")))
    script = f"mount --bind {ro} {ro} && mount -o remount,bind,ro {ro} && exec {argv}"
    proc = subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True, text=True, timeout=60)
    if "Operation not permitted" in proc.stderr and "lbbench" not in proc.stderr:
        pytest.skip(f"no private mount namespace here: {proc.stderr.strip()}")
    assert_one_line(proc, f"--out {ro / 'existing'}", "Read-only file system")
