"""`lbbench doctor`: what can run here, and if not, why (and what to install)."""

from __future__ import annotations

import argparse
import shutil
import subprocess


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print one JSON object")


def _version(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"error: {e}"
    text = (out.stdout or out.stderr).strip().splitlines()
    return text[0] if text else ""


def checks() -> dict[str, dict[str, str | bool]]:
    from lbbench.frontends.registry import frontend_class
    from lbbench.model.names import FRONTENDS, KERNEL_FRONTENDS
    from lbbench.system.netns import netns_unavailable_reason

    result: dict[str, dict[str, str | bool]] = {}
    try:
        from importlib.metadata import version

        import uvloop  # noqa: F401

        result["uvloop"] = {"ok": True, "detail": version("uvloop")}
    except ImportError as e:  # pragma: no cover
        result["uvloop"] = {"ok": False, "detail": f"not importable: {e}"}
    ns = netns_unavailable_reason()
    result["unshare+nft"] = {"ok": ns is None, "detail": ns or "private user+net namespace with nft works"}
    result["ebpf (root, libbpf, cgroup v2)"] = _ebpf_check()
    tools = {"haproxy": ["haproxy", "-v"], "nginx": ["nginx", "-v"], "httpd": ["apache2", "-v"], "wrk": ["wrk", "-v"]}
    for name, argv in tools.items():
        path = shutil.which(argv[0]) or shutil.which(argv[0], path="/usr/sbin:/usr/bin:/sbin")
        result[name] = ({"ok": True, "detail": f"{path}: {_version([path, *argv[1:]])}"} if path else
                        {"ok": False, "detail": f"{argv[0]} not found (apt-get install {_pkg(name)})"})
    for fe in FRONTENDS:
        cls = frontend_class(fe)
        # `lbbench run` enters the private namespace itself, so the kernel front ends are
        # available whenever the namespace is.
        why = cls if isinstance(cls, str) else cls.unavailable_reason()
        detail = "available" + (" (inside lbbench's private user+net namespace)" if fe in KERNEL_FRONTENDS else "")
        result[f"frontend {fe}"] = {"ok": why is None, "detail": why or detail}
    return result


def _ebpf_check() -> dict[str, str | bool]:
    """What ebpf-socketlb needs: real root, libbpf.so.1, cgroup v2, and a kernel that accepts the program."""
    from lbbench.frontends.kernel import ebpf
    from lbbench.system.cgroup import cgroup2_mount
    from lbbench.system.libbpf import LIBRARY

    why = ebpf.unavailable_reason()
    if why is not None:
        return {"ok": False, "detail": why + ("; apt-get install libbpf1" if "libbpf" in why else "")}
    return {"ok": True, "detail": f"real root, {LIBRARY}, cgroup v2 at {cgroup2_mount()}, "
                                  "the kernel accepts the programs"}


def _pkg(name: str) -> str:
    return {"httpd": "apache2", "wrk": "wrk"}.get(name, name)


def run(args: argparse.Namespace) -> int:
    import json

    from rich.console import Console
    from rich.table import Table

    result = checks()
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    t = Table(title="lbbench doctor")
    t.add_column("check")
    t.add_column("ok")
    t.add_column("detail")
    for name, r in result.items():
        t.add_row(name, "[green]yes[/]" if r["ok"] else "[red]no[/]", str(r["detail"]))
    Console().print(t)
    return 0
