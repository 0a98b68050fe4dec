"""Rebuild ``socketlb.bpf.o`` from ``socketlb.bpf.c`` with fixed flags, byte for byte.

``python -m lbbench.frontends.kernel.bpf.build [OUT]`` (default: next to the source). The
object ships in the package because the CI and the users' machines need no clang to run it;
a test rebuilds it where the same clang is present and checks the bytes match.

Reproducible because: the flags are fixed; ``-g`` is needed only for BTF (map definitions and
the socket storage need it), and ``llvm-strip -g`` then drops the DWARF, which holds absolute
paths; the remaining BTF line info names the source relative to its directory
(``-fdebug-prefix-map``). The object depends only on ``<linux/bpf.h>`` (UAPI), not on the
kernel it runs on. CLANG_VERSION records the compiler the shipped object came from.
"""

from __future__ import annotations

import re
import subprocess
import sys
import sysconfig
from pathlib import Path

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "socketlb.bpf.c"
OBJECT = HERE / "socketlb.bpf.o"
CLANG_VERSION = "14.0.6"  # `clang --version` of the shipped object's build
FLAGS = ("-O2", "-g", "-target", "bpf", "-Wall", "-Werror")


def clang_version(clang: str = "clang") -> str | None:
    try:
        out = subprocess.run([clang, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    found = re.search(r"clang version (\d+\.\d+\.\d+)", out)
    return found.group(1) if found else None


def _multiarch_include() -> list[str]:
    """<asm/types.h> lives in the multiarch directory, which -target bpf does not search."""
    arch = sysconfig.get_config_var("MULTIARCH")
    path = Path("/usr/include") / str(arch) if arch else None
    return [f"-I{path}"] if path is not None and path.is_dir() else []


def build(out: Path, clang: str = "clang", strip: str = "llvm-strip") -> Path:
    """Compile the source to `out`; raises CalledProcessError with the compiler's message."""
    out = out.resolve()
    subprocess.run([clang, *FLAGS, f"-fdebug-prefix-map={HERE}=.", *_multiarch_include(),
                    "-c", str(SOURCE), "-o", str(out)], check=True, capture_output=True, text=True, cwd=HERE)
    subprocess.run([strip, "-g", str(out)], check=True, capture_output=True, text=True)
    return out


if __name__ == "__main__":
    print(build(Path(sys.argv[1]) if len(sys.argv) > 1 else OBJECT))
