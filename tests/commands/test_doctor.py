from __future__ import annotations

import json
import shutil
import subprocess

from lbbench.system.procs import lbbench_argv


def test_doctor_reports_every_front_end_with_a_reason() -> None:
    proc = subprocess.run(lbbench_argv("doctor", "--json"), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    for name in ("userspace-dnat", "kernel-nftables", "ebpf-socketlb", "l7-proxy", "haproxy", "haproxy-tcp", "nginx",
                 "httpd"):
        entry = result[f"frontend {name}"]
        assert isinstance(entry["ok"], bool) and entry["detail"]
    assert result["uvloop"]["ok"] is True
    ebpf = result["ebpf (root, libbpf, cgroup v2)"]  # what ebpf-socketlb needs, or which of it is missing
    assert ebpf["ok"] == result["frontend ebpf-socketlb"]["ok"] and ebpf["detail"]
    # what doctor says about a peer agrees with what is on PATH
    has_haproxy = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin")
    assert result["haproxy"]["ok"] == bool(has_haproxy)
    if not result["haproxy"]["ok"]:
        assert "apt-get install haproxy" in result["haproxy"]["detail"]


def test_help_lists_every_command() -> None:
    proc = subprocess.run(lbbench_argv("--help"), capture_output=True, text=True, timeout=60)
    for cmd in ("run", "report", "compare", "doctor", "load", "theory", "serve", "bench", "k8s"):
        assert cmd in proc.stdout
