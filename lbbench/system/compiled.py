"""Which hot-path modules run compiled (mypyc), and the one list of them.

`LBBENCH_COMPILE=1 pip install .` (a regular install, not an editable one) compiles these
modules with mypyc into C extensions; every other install, and any machine without a C
compiler, runs them as the Python source they are. Both builds behave the same and pass the
same tests; the compiled one spends about 40% less CPU per request in the L7 proxy and
about 30% less in the load client's Python (see README, "Compiled hot paths").

This file is read by setup.py on its own (it imports only the standard library).
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import os
from types import ModuleType

COMPILE_ENV = "LBBENCH_COMPILE"
# userspace-dnat's relay engine, hand-written C (setup.py's NATIVE); set PURE_RELAY_ENV=1 to run
# the pure-Python relay (lbbench/frontends/dnat/relay.py) instead.
NATIVE_RELAY = "lbbench.frontends.dnat._crelay"
PURE_RELAY_ENV = "LBBENCH_PURE_RELAY"
# the load generator's native client (open and closed loop, keep-alive and close mode); PURE_CLIENT_ENV=1 runs
# HttpClient instead
NATIVE_CLIENT = "lbbench.load._engine"
PURE_CLIENT_ENV = "LBBENCH_PURE_CLIENT"
# the L7 proxy's scan of the common request and response head, and its per-request Exchange; PURE_HEADS_ENV=1
# parses everything with httptools, as the proxy does for whatever the scan declines, and makes Exchanges in Python
NATIVE_HEADS = "lbbench.frontends.proxy._heads"
PURE_HEADS_ENV = "LBBENCH_PURE_HEADS"
# The hand-written C hot paths, each with a pure-Python fallback: (module, C source). setup.py
# builds them in every install that has a C compiler (optional extensions).
NATIVE_SOURCES: tuple[tuple[str, str], ...] = (
    (NATIVE_RELAY, "lbbench/frontends/dnat/_crelay.c"),  # userspace-dnat's relay engine
    ("lbbench.load._scan", "lbbench/load/_scan.c"),  # the load client's response-head scan
    (NATIVE_CLIENT, "lbbench/load/_engine.c"),  # the load generator's client engine
    (NATIVE_HEADS, "lbbench/frontends/proxy/_heads.c"),  # the L7 proxy's head scan and Exchange
)
# The L7 proxy's request/response path and the load generator's client. Not the forwarder's
# relay: it has the hand-written engine above instead, and the tests subclass the Python
# relay's protocol classes, which compiled classes do not allow.
COMPILED_MODULES = (
    "lbbench.frontends.proxy.backend",
    "lbbench.frontends.proxy.balance",
    "lbbench.frontends.proxy.client",
    "lbbench.frontends.proxy.exchange",
    "lbbench.frontends.proxy.http",
    "lbbench.frontends.proxy.queue",
    "lbbench.frontends.proxy.request",
    "lbbench.frontends.proxy.route",
    "lbbench.frontends.proxy.upstream",
    "lbbench.load.client",
    "lbbench.load.recorder",
)


def compiled_modules() -> list[str]:
    """The modules of COMPILED_MODULES that this interpreter would import as C extensions."""
    suffixes = tuple(importlib.machinery.EXTENSION_SUFFIXES)
    out = []
    for name in COMPILED_MODULES:
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.origin is not None and spec.origin.endswith(suffixes):
            out.append(name)
    return out


def build_label() -> str:
    """'compiled (mypyc)', 'pure Python', or 'partly compiled (k of n modules)', for reports."""
    n = len(compiled_modules())
    if n == 0:
        return "pure Python"
    if n == len(COMPILED_MODULES):
        return "compiled (mypyc)"
    return f"partly compiled ({n} of {len(COMPILED_MODULES)} modules)"


def native_module(name: str, pure_env: str) -> ModuleType | None:
    """The hand-written C module `name` if it is built, importable and not turned off (`pure_env`=1), else None."""
    if os.environ.get(pure_env, "") not in ("", "0"):
        return None
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


def native_relay() -> bool:
    """Whether userspace-dnat relays with the C engine here: built, importable, and not turned off."""
    return native_module(NATIVE_RELAY, PURE_RELAY_ENV) is not None


def relay_label() -> str:
    """'native relay' or 'Python relay': which relay userspace-dnat runs, for reports."""
    return "native relay" if native_relay() else "Python relay"


def response_scan_label() -> str:
    """How the load client reads response heads: 'C response scan', 'Python response scan' or 'httptools'."""
    from lbbench.load import head  # here, not at the top: setup.py loads this file on its own

    return "C response scan" if head.NATIVE else ("Python response scan" if head.scan else "httptools")


def native_client() -> bool:
    """Whether keep-alive load (open or closed loop) runs on the C engine here: built, importable, not turned off."""
    return native_module(NATIVE_CLIENT, PURE_CLIENT_ENV) is not None


def load_client_label() -> str:
    """'native load client' or 'Python load client', for reports: what sends the load, keep-alive
    and close mode alike."""
    return "native load client" if native_client() else "Python load client"


def proxy_heads() -> ModuleType | None:
    """The L7 proxy's C head scan (lbbench.frontends.proxy._heads) if it is built and not turned off, else None."""
    return native_module(NATIVE_HEADS, PURE_HEADS_ENV)


def proxy_heads_label() -> str:
    """'C proxy head scan' or 'httptools proxy parse': how the L7 proxy reads the common heads, for reports."""
    return "C proxy head scan" if proxy_heads() is not None else "httptools proxy parse"


def hot_paths_label() -> str:
    """Which build of each hot path runs here, for a run's metadata.

    E.g. 'pure Python, native relay, C response scan, native load client, C proxy head scan'."""
    return f"{build_label()}, {relay_label()}, {response_scan_label()}, {load_client_label()}, {proxy_heads_label()}"
