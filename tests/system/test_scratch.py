"""Private scratch folders: 0700 with 0600 files, left by a SIGKILL, swept by the next start."""

from __future__ import annotations

import asyncio
import os
import stat
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from lbbench.cluster.standalone import fresh_ip
from lbbench.frontends.base import FrontendPlan
from lbbench.frontends.reference.common import ReferenceFrontend
from lbbench.frontends.reference.haproxy import HaproxyHttp
from lbbench.frontends.reference.httpd import Httpd
from lbbench.frontends.reference.nginx import Nginx
from lbbench.model.proxy import ProxySettings
from lbbench.model.service import ServiceSpec
from lbbench.system.procs import Supervisor
from lbbench.system.scratch import owner_pid, private_dir, sweep_stale, write_private
from lbbench.system.users import unprivileged_identity

ROOT = Path(__file__).resolve().parents[2]  # the checkout whose lbbench the run must import
CLASSES = [pytest.param(c, id=c.name, marks=pytest.mark.skipif(c.unavailable_reason() is not None,
                                                                reason=c.unavailable_reason() or ""))
           for c in (HaproxyHttp, Nginx, Httpd)]

# A run that starts one reference front end, says where its folder is, and waits to be killed.
_RUN = textwrap.dedent("""
    import asyncio, sys
    from lbbench.frontends.base import FrontendPlan
    from lbbench.frontends.registry import frontend_class
    from lbbench.model.proxy import ProxySettings
    from lbbench.model.service import ServiceSpec
    from lbbench.system.procs import Supervisor

    async def main() -> None:
        name, service_ip, ingress_ip = sys.argv[1:4]
        plan = FrontendPlan((ServiceSpec("web", "default", "ClusterIP", service_ip, 8000, 8080),),
                            ingress_ip=ingress_ip, ingress_port=8080, proxy=ProxySettings(maxconn=0))
        fe = frontend_class(name)(plan, Supervisor())
        await fe.start()
        print(fe.workdir, fe.child.pid, flush=True)
        await asyncio.sleep(120)

    asyncio.run(main())
""")


def _plan() -> FrontendPlan:
    return FrontendPlan((ServiceSpec("web", "default", "ClusterIP", fresh_ip(), 8000, 8080),),
                        ingress_ip=fresh_ip(), ingress_port=8080, proxy=ProxySettings(maxconn=0))


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _killed_run(name: str) -> tuple[Path, int]:
    """Start a run with front end `name`, SIGKILL it once serving: (its folder, the proxy's pid)."""
    proc = subprocess.Popen([sys.executable, "-c", _RUN, name, fresh_ip(), fresh_ip()],
                            stdout=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().decode().split()
        assert line, f"the run did not start (exit {proc.poll()})"
    finally:
        proc.kill()  # SIGKILL: no handler, no cleanup
        proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()
    return Path(line[0]), int(line[1])


@pytest.mark.parametrize("cls", CLASSES)
def test_a_sigkilled_runs_folder_is_private_and_swept_at_the_next_start(cls: type[ReferenceFrontend]) -> None:
    workdir, proxy_pid = _killed_run(cls.name)
    # The guarded process group takes the proxy down with the run; wait for it, never kill by name.
    deadline = time.monotonic() + 10
    while psutil.pid_exists(proxy_pid) and psutil.Process(proxy_pid).status() != psutil.STATUS_ZOMBIE \
            and time.monotonic() < deadline:
        time.sleep(0.05)
    assert workdir.is_dir(), "SIGKILL gives no chance to clean up: the folder is expected to remain"
    assert workdir.name.startswith(f"lbbench-{cls.scratch}-") and owner_pid(workdir) is not None
    opens_for_workers = cls.workers_switch_user and unprivileged_identity() is not None
    assert _mode(workdir) == (0o711 if opens_for_workers else 0o700)
    for f in (workdir / cls.config_name, workdir / "output.log"):
        assert _mode(f) == 0o600, f

    async def next_start() -> bool:
        with Supervisor() as sup:
            fe = cls(_plan(), sup)
            await fe.start()
            try:
                return workdir.exists()
            finally:
                await fe.stop()

    assert asyncio.run(next_start()) is False


def test_sweep_spares_live_owners_foreign_names_and_files(tmp_path: Path) -> None:
    with subprocess.Popen(["sleep", "60"]) as live:
        try:
            dead_pid = _a_dead_pid()
            dead = tmp_path / f"lbbench-haproxy-{dead_pid}-abcd_123"
            alive = tmp_path / f"lbbench-nginx-{live.pid}-abcd_123"
            mine = tmp_path / f"lbbench-l7-proxy-{os.getpid()}-abcd_123"
            foreign = tmp_path / f"lbbench-results-{dead_pid}-abcd_123"  # not a scratch kind
            a_file = tmp_path / f"lbbench-httpd-{dead_pid}-abcd_123x"
            for d in (dead, alive, mine, foreign):
                d.mkdir()
                write_private(d / "cfg", "x")
            a_file.write_text("not a folder")
            assert sweep_stale(tmp_path) == [dead]
            assert not dead.exists() and alive.exists() and mine.exists() and foreign.exists() and a_file.exists()
        finally:
            live.kill()


def test_private_dir_and_files_ignore_the_umask() -> None:
    old = os.umask(0)
    try:
        d = private_dir("rules")
        try:
            write_private(d / "f", "secret")
            write_private(d / "f", "rewritten")  # an existing file keeps 0600
            assert (_mode(d), _mode(d / "f")) == (0o700, 0o600)
            assert d.parent == Path(tempfile.gettempdir()) and owner_pid(d) == os.getpid()
        finally:
            (d / "f").unlink()
            d.rmdir()
    finally:
        os.umask(old)


def _a_dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid

