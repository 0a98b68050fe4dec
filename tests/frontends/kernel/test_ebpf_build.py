"""The shipped BPF object is what its source builds to, byte for byte (where the same clang exists)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from lbbench.frontends.kernel.bpf import build


def test_shipped_object_matches_a_rebuild_from_source(tmp_path: Path) -> None:
    if shutil.which("clang") is None or shutil.which("llvm-strip") is None:
        pytest.skip("clang/llvm-strip not installed (apt-get install clang llvm)")
    version = build.clang_version()
    if version != build.CLANG_VERSION:
        pytest.skip(f"clang {version} here, the shipped object was built with {build.CLANG_VERSION}: "
                    "bytes would differ without the source having changed")
    rebuilt = build.build(tmp_path / "socketlb.bpf.o")
    assert rebuilt.read_bytes() == build.OBJECT.read_bytes(), (
        "socketlb.bpf.o is stale: run python -m lbbench.frontends.kernel.bpf.build and commit it")


def test_object_has_no_absolute_build_path() -> None:
    assert b"/work/" not in build.OBJECT.read_bytes()
    assert str(build.HERE).encode() not in build.OBJECT.read_bytes()
