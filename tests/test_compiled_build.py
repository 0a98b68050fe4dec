"""The compiled build of the hot paths (mypyc; `LBBENCH_COMPILE=1`, see setup.py) works like the sources.

Built here from this checkout's sources (`setup.py build_ext`, as `pip install` would), the hot
modules of lbbench/system/compiled.py import as C extensions, and the proxy's byte-exact header
tests, its hostile-input corpus, its queue tests and the load client's tests pass against them,
proxies started as child processes included. Every other test of the suite runs on the pure-Python
sources: the fallback, and what an install without LBBENCH_COMPILE (or a C compiler) runs.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from lbbench.system.compiled import COMPILE_ENV, COMPILED_MODULES, PURE_RELAY_ENV
from lbbench.system.procs import Supervisor

ROOT = Path(__file__).resolve().parent.parent
# The tests run against the compiled build: byte-exact heads, hostile input, queueing, the load client.
COMPILED_TESTS = (
    "tests/frontends/proxy/test_proxy_http.py",
    "tests/frontends/proxy/test_proxy_corpus.py",
    "tests/frontends/proxy/test_proxy_queue.py",
    "tests/load/test_client.py",
    "tests/frontends/dnat/test_native_relay.py",  # the hand-written C relay engine (setup.py's NATIVE)
)


def _missing_toolchain() -> str:
    """Why the compiled build cannot be made here ('' if it can)."""
    cc = (sysconfig.get_config_var("CC") or "cc").split()[0]
    if shutil.which(cc) is None:
        return f"no C compiler ({cc})"
    try:
        import mypyc  # noqa: F401
    except ImportError:
        return "mypy (mypyc) is not installed"
    return ""


MISSING = _missing_toolchain()
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900), pytest.mark.skipif(bool(MISSING), reason=MISSING)]


def _run(argv: list[str], cwd: Path, env: dict[str, str], timeout_s: float) -> tuple[int, str]:
    with Supervisor() as sup:
        child = sup.spawn("compiled-build", argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, env=env, cwd=str(cwd))
        out, _ = child.popen.communicate(timeout=timeout_s)
    return child.popen.returncode, out.decode(errors="replace")


@pytest.fixture(scope="module")
def compiled_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder to put first on sys.path: lbbench's sources with the hot modules compiled beside them."""
    work = tmp_path_factory.mktemp("compiled")
    src, out = work / "src", work / "lib"
    src.mkdir()
    for name in ("setup.py", "pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.so")
    shutil.copytree(ROOT / "lbbench", src / "lbbench", ignore=ignore)
    rc, text = _run([sys.executable, "setup.py", "-q", "build_ext", "--build-lib", str(out)], src,
                    {**os.environ, COMPILE_ENV: "1"}, 900)
    assert rc == 0, text[-3000:]
    shutil.copytree(src / "lbbench", out / "lbbench", ignore=ignore, dirs_exist_ok=True)  # the .py beside the .so
    return out


def _env() -> dict[str, str]:
    """This environment, without a request for the Python relay (the native one is under test)."""
    return {k: v for k, v in os.environ.items() if k != PURE_RELAY_ENV}


def _build_of(path: Path) -> dict[str, object]:
    """Which build `path` holds: mypyc's modules and label, and userspace-dnat's relay."""
    code = ("import json; from lbbench.system.compiled import build_label, compiled_modules, relay_label; "
            "print(json.dumps({'label': build_label(), 'compiled': compiled_modules(), 'relay': relay_label()}))")
    rc, text = _run([sys.executable, "-c", code], path, {**_env(), "PYTHONPATH": str(path)}, 60)
    assert rc == 0, text
    doc: dict[str, object] = json.loads(text.strip().splitlines()[-1])
    return doc


def test_the_hot_modules_import_compiled_from_the_build_and_as_python_from_the_sources(compiled_tree: Path) -> None:
    assert _build_of(compiled_tree) == {"label": "compiled (mypyc)", "compiled": list(COMPILED_MODULES),
                                        "relay": "native relay"}  # NATIVE is built with them
    assert _build_of(ROOT).items() >= {"label": "pure Python", "compiled": []}.items()


def test_proxy_and_load_client_tests_pass_on_the_compiled_build(compiled_tree: Path) -> None:
    # -P and cwd: neither this checkout nor the test's folder comes before the compiled build on sys.path,
    # in pytest or in the proxies it starts (python -m lbbench puts its cwd first).
    env = {**_env(), "PYTHONPATH": str(compiled_tree)}
    argv = [sys.executable, "-P", "-m", "pytest", "-q", "--rootdir", str(ROOT),
            "-c", str(ROOT / "pyproject.toml"), *(str(ROOT / t) for t in COMPILED_TESTS)]
    rc, text = _run(argv, compiled_tree, env, 800)
    assert rc == 0, text[-4000:]
    assert " passed" in text and " failed" not in text
