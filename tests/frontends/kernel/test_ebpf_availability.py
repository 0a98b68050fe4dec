"""ebpf-socketlb says why it cannot run: not root, inside a user namespace, libbpf missing, the verifier's refusal."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from lbbench.frontends.kernel import ebpf
from lbbench.frontends.kernel.bpf import build
from lbbench.system import libbpf

REFUSED = r"""
#include <linux/bpf.h>
#define SEC(name) __attribute__((section(name), used))
SEC("cgroup/connect4")
int connect4(struct bpf_sock_addr *ctx) { return *(volatile int *)(long)ctx->user_ip4; }
SEC("cgroup/getpeername4")
int getpeername4(struct bpf_sock_addr *ctx) { return 1; }
SEC("cgroup/recvmsg4")
int recvmsg4(struct bpf_sock_addr *ctx) { return 1; }
char LICENSE[] SEC("license") = "GPL";
"""


def test_not_root_is_a_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    why = ebpf.unavailable_reason()
    assert why is not None and why.startswith("needs real root to load BPF (kernel.unprivileged_bpf_disabled=")


def test_missing_libbpf_is_a_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    if ebpf.unavailable_reason() is not None:
        pytest.skip(f"ebpf-socketlb unavailable: {ebpf.unavailable_reason()}")
    monkeypatch.setattr(libbpf, "LIBRARY", "libbpf.so.0-not-installed")
    libbpf._load.cache_clear()
    try:
        assert "libbpf.so.0-not-installed cannot be loaded" in (ebpf.unavailable_reason() or "")
    finally:
        monkeypatch.undo()
        libbpf._load.cache_clear()


def test_the_verifiers_refusal_is_the_reason(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if ebpf.unavailable_reason() is not None:
        pytest.skip(f"ebpf-socketlb unavailable: {ebpf.unavailable_reason()}")
    if shutil.which("clang") is None:
        pytest.skip("clang is not installed")
    source = tmp_path / "refused.bpf.c"
    source.write_text(REFUSED)
    obj = tmp_path / "refused.bpf.o"
    subprocess.run(["clang", "-O2", "-target", "bpf", *build._multiarch_include(), "-c", str(source),
                    "-o", str(obj)], check=True, capture_output=True)
    monkeypatch.setattr(ebpf, "OBJECT", obj)
    ebpf._probe_load.cache_clear()
    try:
        why = ebpf.unavailable_reason()
    finally:
        monkeypatch.undo()
        ebpf._probe_load.cache_clear()
    assert why is not None and why.startswith("the kernel refused the program: ")
    assert "invalid mem access" in why  # the verifier's own words, not just EACCES
    assert ebpf.unavailable_reason() is None
