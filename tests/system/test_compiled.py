"""The list of compiled hot-path modules names real modules (a renamed module cannot drop out of the build unseen).

Which build is imported, compiled or pure Python, is checked in tests/test_compiled_build.py, on a real build.
"""

from __future__ import annotations

import importlib.util

from lbbench.system.compiled import COMPILED_MODULES


def test_every_listed_module_exists() -> None:
    for name in COMPILED_MODULES:
        spec = importlib.util.find_spec(name)
        assert spec is not None and spec.origin is not None, name
    assert len(set(COMPILED_MODULES)) == len(COMPILED_MODULES)
