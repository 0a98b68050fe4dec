"""The lists of compiled hot-path modules name real modules (a renamed module cannot drop out of the build unseen),
and where a C compiler is there the hand-written C modules are built (else their tests would skip unseen).

Which build is imported, compiled or pure Python, is checked in tests/test_compiled_build.py, on a real build.
"""

from __future__ import annotations

import importlib
import importlib.util
import shutil
import sysconfig
from pathlib import Path

import pytest

from lbbench.system.compiled import COMPILED_MODULES, NATIVE_SOURCES

ROOT = Path(__file__).resolve().parents[2]
CC = (sysconfig.get_config_var("CC") or "cc").split()[0]


def test_every_listed_module_exists() -> None:
    for name in COMPILED_MODULES:
        spec = importlib.util.find_spec(name)
        assert spec is not None and spec.origin is not None, name
    assert len(set(COMPILED_MODULES)) == len(COMPILED_MODULES)


@pytest.mark.skipif(shutil.which(CC) is None, reason=f"no C compiler ({CC}): the native modules are optional")
@pytest.mark.parametrize(("module", "source"), NATIVE_SOURCES)
def test_native_modules_are_built_where_a_compiler_is(module: str, source: str) -> None:
    """The native tests skip where a module is not built; with a compiler there, that would hide a
    failed build (setup.py builds them as optional extensions, a failure only a warning)."""
    assert (ROOT / source).is_file()
    try:
        importlib.import_module(module)
    except ImportError as e:
        pytest.fail(f"{module} is not built ({e}): pip install -e . (or python setup.py build_ext --inplace) "
                    "and read its compiler output")
