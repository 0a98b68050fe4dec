"""The optional compiled build of lbbench's hot paths (everything else is in pyproject.toml).

    pip install . mypy wheel && LBBENCH_COMPILE=1 pip install --no-build-isolation --no-deps --force-reinstall .

compiles the modules listed in lbbench/system/compiled.py with mypyc (it needs mypy, a C
compiler and lbbench's dependencies in the environment, hence the plain install first and
--no-build-isolation: mypyc type-checks the modules against them). Without
LBBENCH_COMPILE lbbench installs as pure Python, as it always did. An editable install cannot
be compiled: its C extensions would shadow the sources being edited.

Separately, and in every install (editable ones included), the small hand-written C modules
of NATIVE are built when a C compiler is there. They are optional (`optional=True`): without a
compiler pip says so and lbbench runs their pure-Python fallbacks, which the suite also tests.
They are new modules of their own (e.g. lbbench/frontends/dnat/_crelay.c), so they shadow no source.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from typing import Any

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

HERE = Path(__file__).resolve().parent


def _compiled_spec() -> Any:
    """lbbench/system/compiled.py, loaded on its own (lbbench's dependencies need not be installed)."""
    spec = importlib.util.spec_from_file_location("_lbbench_compiled", HERE / "lbbench" / "system" / "compiled.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


COMPILED = _compiled_spec()
# Hand-written C hot paths (the list is lbbench/system/compiled.py's NATIVE_SOURCES).
# A module is rebuilt when any of lbbench's C headers changes (lbbench/load/_http.h is shared by three).
HEADERS = sorted(str(h.relative_to(HERE)) for h in (HERE / "lbbench").rglob("*.h"))
NATIVE = [Extension(name, sources=[src], optional=True, extra_compile_args=["-O2", "-std=gnu99", "-Wall", "-Wextra"],
                    depends=HEADERS)
          for name, src in COMPILED.NATIVE_SOURCES]


class MypycBuildExt(build_ext):
    """Runs mypyc when the extensions are built, not each time setup.py is read for metadata."""

    def finalize_options(self) -> None:
        env = COMPILED.COMPILE_ENV
        if self.inplace or getattr(self, "editable_mode", False):
            sys.exit(f"{env}=1 needs a regular install (pip install --no-build-isolation .): an editable "
                     "install's compiled modules would shadow the sources being edited")
        try:
            from mypyc.build import mypycify
        except ImportError:
            sys.exit(f"{env}=1 needs mypy and lbbench's dependencies in the environment (pip install . mypy "
                     "wheel) and pip install --no-build-isolation")
        paths = [str(Path(*name.split("."))) + ".py" for name in COMPILED.COMPILED_MODULES]
        self.distribution.ext_modules = [*mypycify(paths, opt_level="3"), *NATIVE]
        super().finalize_options()  # takes the extensions from the distribution


if os.environ.get(COMPILED.COMPILE_ENV) == "1":
    # A stand-in until build_ext runs mypyc: it makes the wheel a platform one and runs build_ext.
    setup(ext_modules=[Extension("lbbench.system._mypyc", sources=[])], cmdclass={"build_ext": MypycBuildExt})
else:
    setup(ext_modules=NATIVE)
