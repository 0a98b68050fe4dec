"""The load client's fast path for the common response: one whole, plain HTTP/1.1 response in one read.

`scan(data)` returns ``(status, keep_alive, pod, pod_ip, queue_ms, service_ms, proxy_queue_ms,
proxy_upstream_ms)`` when `data` is exactly one complete response of a strict subset of HTTP/1.1,
and None for anything else, which the client then parses with httptools as it always did. The
subset: status line ``HTTP/1.1 DDD reason`` (status 200-599 but 204 and 304), header fields
``name: value`` (a token; printable ASCII, not empty, no tab, no trailing blank), CRLF line ends,
exactly one Content-Length and a body of exactly that many bytes, no Transfer-Encoding, Upgrade
or Proxy-Connection, at most one Connection and that ``keep-alive`` or ``close``. A head split
across reads, a chunked or EOF-delimited body, 1xx, HTTP/1.0, anything odd: None.

Wherever it answers, the answer is what httptools' callbacks would have recorded (the last of a
repeated field counts, but a timing value `float()` rejects is skipped; a missing field is "" or
NaN): tests/load/test_head.py checks that with hypothesis on generated and hostile responses.

Why: httptools calls back into Python once per header field, and the head of a response cost
~34k instructions that way (callgrind, tests/benchmarks/instructions.py), two thirds of the client's
whole request cycle; the C scan takes ~2.7k. `scan` is the C module lbbench.load._scan (built by
`pip install -e .` when a C compiler is there, see setup.py). `scan_py` here is its specification
in Python (two regular expressions), which the tests hold both the C scan and httptools to; it is
no fast path: 2.6 us for nginx's answer against 0.65 us for httptools' parse with empty callbacks
(the keep-alive cycle took 72.9k instructions with it, 50.7k with httptools alone). So without the
C module `scan` is None and the client parses everything with httptools, as it did before;
LBBENCH_PURE_SCAN=1 makes the client use `scan_py` (to run the suite on the Python logic).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable

Head = tuple[int, bool, str, str, float, float, float, float]
Scan = Callable[[bytes], Head | None]
PURE_ENV = "LBBENCH_PURE_SCAN"

_TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_VALUE = rb"[\x21-\x7e](?:[\x20-\x7e]*[\x21-\x7e])?"  # printable, not empty, no blank at either end
_HEAD = re.compile(rb"HTTP/1\.1 ([0-9]{3}) [\x20-\x7e]*\r\n((?:" + _TOKEN + rb": *" + _VALUE + rb"\r\n)*)\r\n")
_FIELD = re.compile(rb"([^:]+): *([^\r]*)\r\n")  # within a block _HEAD has checked

_POD, _POD_IP, _QUEUE_MS, _SERVICE_MS, _PROXY_QUEUE_MS, _PROXY_UPSTREAM_MS, _LENGTH, _CONNECTION, _FALLBACK = range(9)
_KINDS = {b"x-pod": _POD, b"x-pod-ip": _POD_IP, b"x-queue-ms": _QUEUE_MS, b"x-service-ms": _SERVICE_MS,
          b"x-proxy-queue-ms": _PROXY_QUEUE_MS, b"x-proxy-upstream-ms": _PROXY_UPSTREAM_MS,
          b"content-length": _LENGTH, b"connection": _CONNECTION, b"transfer-encoding": _FALLBACK,
          b"upgrade": _FALLBACK, b"proxy-connection": _FALLBACK}
_DIGITS = frozenset(b"0123456789")


def scan_py(data: bytes) -> Head | None:
    """The reference scan (see the module docstring); lbbench.load._scan is its C twin."""
    if type(data) is not bytes:
        return None
    m = _HEAD.match(data)
    if m is None:
        return None
    status = int(m[1])
    if status < 200 or status > 599 or status == 204 or status == 304:
        return None  # 1xx, 204 and 304 have their own body rules: httptools decides those
    texts = ["", ""]
    times = [math.nan, math.nan, math.nan, math.nan]
    length = -1
    keep_alive: bool | None = None
    for name, value in _FIELD.findall(m[2]):
        kind = _KINDS.get(name.lower())
        if kind is None:
            continue
        if kind <= _POD_IP:
            texts[kind] = value.decode("latin-1")
        elif kind <= _PROXY_UPSTREAM_MS:
            try:  # noqa: SIM105 (contextlib.suppress would cost a context manager per field)
                times[kind - _QUEUE_MS] = float(value)
            except ValueError:
                pass  # a malformed timing value is missing (an earlier good one stays), as with httptools
        elif kind == _LENGTH:
            if length >= 0 or len(value) > 15 or not _DIGITS.issuperset(value):
                return None  # a second Content-Length is httptools' to reject
            length = int(value)
        elif kind == _CONNECTION:
            lower = value.lower()
            if keep_alive is not None or lower not in (b"keep-alive", b"close"):
                return None
            keep_alive = lower == b"keep-alive"
        else:
            return None
    if length < 0 or len(data) - m.end() != length:
        return None  # exactly one response, all of it
    return (status, keep_alive is not False, texts[0], texts[1], times[0], times[1], times[2], times[3])


def _pick() -> Scan | None:
    if os.environ.get(PURE_ENV) == "1":
        return scan_py
    try:
        from lbbench.load._scan import scan as native
    except ImportError:
        return None  # no C module (no compiler at install time): httptools alone beats scan_py
    return native


scan: Scan | None = _pick()
NATIVE = scan is not None and scan is not scan_py  # for reports and tests: the C scan runs here
