"""Per-worker bookkeeping of finished requests: raw rows, histograms and counters.

Rows are kept in `array.array` columns (an append is about as cheap as a list's, a float
takes 8 bytes instead of 32, and the garbage collector never walks them) and become numpy
columns once, at the end. Strings (pod names, IPs, error kinds) are interned to small
integer codes with a table per column.
"""

from __future__ import annotations

import math
from array import array
from collections import Counter
from typing import Any

import numpy as np

from lbbench.load.client import ERROR_KINDS, Request
from lbbench.load.histogram import LogHistogram

ERROR_CODE = {"": 0, **{kind: i + 1 for i, kind in enumerate(ERROR_KINDS)}}
ERROR_TABLE = ("", *ERROR_KINDS)
_TYPECODES = {"intended_s": "d", "sent_s": "d", "done_s": "d", "status": "h", "error": "b", "pod": "i",
              "pod_ip": "i", "conn_id": "q", "new_conn": "b", "queue_ms": "d", "service_ms": "d"}


class _Interner:
    __slots__ = ("codes", "table")

    def __init__(self) -> None:
        self.codes: dict[str, int] = {"": 0}
        self.table: list[str] = [""]

    def code(self, text: str) -> int:
        c = self.codes.get(text)
        if c is None:
            c = self.codes[text] = len(self.table)
            self.table.append(text)
        return c


class Recorder:
    """What one worker saw. Times in rows are seconds relative to the run's t=0 (`start_at`)."""

    def __init__(self, start_at: float, record_rows: bool) -> None:
        self.start_at = start_at
        self.record_rows = record_rows
        self.latency = LogHistogram()  # successful requests: done - intended
        self.lateness = LogHistogram()  # issued - intended (>= 0: sends never leave early)
        self.pool_wait = LogHistogram()  # sent - issued: waiting for a free keep-alive connection
        self.interval_latency = LogHistogram()  # since the last progress report
        self.interval_lateness = LogHistogram()
        self.issued = 0
        self.done = 0
        self.ok = 0
        self.errors: Counter[str] = Counter()
        self.statuses: Counter[int] = Counter()
        self.first_issue = math.nan
        self.last_issue = math.nan
        self._pods = _Interner()
        self._ips = _Interner()
        self._cols: dict[str, array[Any]] = {name: array(code) for name, code in _TYPECODES.items()}

    def on_issue(self, req: Request) -> None:
        self.issued += 1
        if self.issued == 1:
            self.first_issue = req.issued
        self.last_issue = req.issued
        late = req.issued - req.intended
        late = late if late > 0.0 else 0.0
        self.lateness.record(late)
        self.interval_lateness.record(late)

    def on_done(self, req: Request) -> None:
        self.done += 1
        if req.error:
            self.errors[req.error] += 1
        else:
            self.ok += 1
            latency = req.done - req.intended
            self.latency.record(latency)
            self.interval_latency.record(latency)
        if req.status:
            self.statuses[req.status] += 1
        if req.sent == req.sent:  # not NaN: it did leave
            wait = req.sent - req.issued
            self.pool_wait.record(wait if wait > 0.0 else 0.0)
        if self.record_rows:
            self._append(req)

    def _append(self, req: Request) -> None:
        c = self._cols
        t0 = self.start_at
        c["intended_s"].append(req.intended - t0)
        c["sent_s"].append(req.sent - t0)
        c["done_s"].append(req.done - t0)
        c["status"].append(req.status)
        c["error"].append(ERROR_CODE[req.error])
        c["pod"].append(self._pods.code(req.pod))
        c["pod_ip"].append(self._ips.code(req.pod_ip))
        c["conn_id"].append(req.conn_id)
        c["new_conn"].append(req.new_conn)
        c["queue_ms"].append(req.queue_ms)
        c["service_ms"].append(req.service_ms)

    def take_interval(self) -> tuple[LogHistogram, LogHistogram]:
        """The latency and lateness histograms since the last call (for progress reports)."""
        out = (self.interval_latency, self.interval_lateness)
        self.interval_latency = LogHistogram()
        self.interval_lateness = LogHistogram()
        return out

    def counters(self) -> dict[str, Any]:
        return {"issued": self.issued, "done": self.done, "ok": self.ok, "errors": dict(self.errors)}

    def columns(self) -> dict[str, Any]:
        """Rows as numpy columns plus the string tables of the coded columns."""
        out: dict[str, Any] = {name: np.array(col) for name, col in self._cols.items()}
        out["new_conn"] = out["new_conn"].astype(np.bool_)
        out["pod_table"] = list(self._pods.table)
        out["pod_ip_table"] = list(self._ips.table)
        return out
