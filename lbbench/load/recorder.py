"""Per-worker bookkeeping of finished requests: raw rows, histograms and counters.

Rows are kept in `array.array` columns (an append is about as cheap as a list's, a float
takes 8 bytes instead of 32, and the garbage collector never walks them) and become numpy
columns once, at the end. Strings (pod names, IPs, error kinds) are interned to small
integer codes with a table per column.

Latency, lateness and pool-wait values are appended to small buffers on the hot path and
binned into the histograms in bulk (numpy, ~15 ns a value instead of ~500 ns one by one)
every FLUSH_AT values and whenever the histograms are read (progress reports, the end).
The counts are the same as binning one by one. FLUSH_AT bounds each pause (~30 us): binning
a whole 250 ms interval at once in the progress report had stalled sends for up to 1.6 ms at
50k req/s, enough to show in the lateness p99.
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
FLUSH_AT = 2048
_TYPECODES = {"intended_s": "d", "sent_s": "d", "done_s": "d", "status": "h", "error": "b", "pod": "i",
              "pod_ip": "i", "conn_id": "q", "new_conn": "b", "queue_ms": "d", "service_ms": "d",
              "proxy_queue_ms": "d", "proxy_upstream_ms": "d"}


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


class _Binned:
    """A cumulative histogram, one since the last `take_interval`, and values not yet binned."""

    __slots__ = ("interval", "pending", "total")

    def __init__(self) -> None:
        self.total = LogHistogram()
        self.interval = LogHistogram()
        self.pending: array[float] = array("d")

    def flush(self) -> None:
        if not self.pending:
            return
        part = LogHistogram()
        part.record_many(np.frombuffer(self.pending, dtype=np.float64))
        self.pending = array("d")
        self.total.merge(part)
        self.interval.merge(part)

    def record_many(self, values: np.ndarray[Any, np.dtype[np.float64]]) -> None:
        """Bin a batch at once (the native client's drained records)."""
        self.flush()
        if len(values):
            part = LogHistogram()
            part.record_many(values)
            self.total.merge(part)
            self.interval.merge(part)

    def take_interval(self) -> LogHistogram:
        self.flush()
        out, self.interval = self.interval, LogHistogram()
        return out


class Recorder:
    """What one worker saw. Times in rows are seconds relative to the run's t=0 (`start_at`)."""

    def __init__(self, start_at: float, record_rows: bool, window_s: float = math.inf) -> None:
        self.start_at = start_at
        self.record_rows = record_rows
        self.window_end = start_at + window_s  # the end of the schedule: answers by then kept up with it
        self._latency = _Binned()  # successful requests: done - intended
        self._lateness = _Binned()  # issued - intended (>= 0: sends never leave early)
        self._pool_wait = _Binned()  # sent - issued: waiting for a free keep-alive connection
        # the client's own part of that wait: after the answer that freed its connection had reached
        # the socket (the native client's `freed`); all of it where that is unknown (the Python client)
        self._pool_wait_own = _Binned()
        self.issued = 0
        self.done = 0
        self._done_unbinned = FLUSH_AT  # on_done calls left before the latency and pool-wait values are binned
        self.ok = 0
        self.ok_while_sending = 0  # answered 2xx by the end of the schedule
        self.errors: Counter[str] = Counter()
        self.statuses: Counter[int] = Counter()
        self.first_issue = math.nan
        self.last_issue = math.nan
        self._pods = _Interner()
        self._ips = _Interner()
        self._pod_codes = self._pods.codes
        self._ip_codes = self._ips.codes
        self._cols: dict[str, array[Any]] = {name: array(code) for name, code in _TYPECODES.items()}
        # the columns' bound append methods, in _TYPECODES order (one tuple unpack per row)
        self._appenders = tuple(col.append for col in self._cols.values())
        # the native client's string codes -> this recorder's (on_records)
        self._engine_codes: tuple[list[int], list[int]] = ([], [])

    @property
    def latency(self) -> LogHistogram:
        self._latency.flush()
        return self._latency.total

    @property
    def lateness(self) -> LogHistogram:
        self._lateness.flush()
        return self._lateness.total

    @property
    def pool_wait(self) -> LogHistogram:
        self._pool_wait.flush()
        return self._pool_wait.total

    @property
    def pool_wait_own(self) -> LogHistogram:
        self._pool_wait_own.flush()
        return self._pool_wait_own.total

    def on_issue(self, req: Request) -> None:
        self.issued += 1
        if self.issued == 1:
            self.first_issue = req.issued
        self.last_issue = req.issued
        late = req.issued - req.intended
        pending = self._lateness.pending
        pending.append(late if late > 0.0 else 0.0)
        if len(pending) >= FLUSH_AT:
            self._lateness.flush()

    def on_done(self, req: Request) -> None:
        self.done += 1
        if req.error:
            self.errors[req.error] += 1
        else:
            self.ok += 1
            self.ok_while_sending += req.done <= self.window_end
            self._latency.pending.append(req.done - req.intended)
        if req.status:
            self.statuses[req.status] += 1
        if req.sent == req.sent:  # not NaN: it did leave
            wait = req.sent - req.issued
            self._pool_wait.pending.append(wait if wait > 0.0 else 0.0)
            own = req.sent - (req.freed if req.freed > req.issued else req.issued)  # NaN freed: all of it
            self._pool_wait_own.pending.append(own if own > 0.0 else 0.0)
        if self.record_rows:
            self._append(req)
        # Each buffer takes at most one value here: counting calls bounds them all.
        self._done_unbinned -= 1
        if not self._done_unbinned:
            self._done_unbinned = FLUSH_AT
            self._latency.flush()
            self._pool_wait.flush()
            self._pool_wait_own.flush()

    def _append(self, req: Request) -> None:
        t0 = self.start_at
        (intended, sent, done, status, error, pod, pod_ip, conn_id, new_conn, queue_ms, service_ms, proxy_queue_ms,
         proxy_upstream_ms) = self._appenders
        intended(req.intended - t0)
        sent(req.sent - t0)
        done(req.done - t0)
        status(req.status)
        error(ERROR_CODE[req.error])
        # the interners' dicts first: a method call per string only for one not seen yet
        code = self._pod_codes.get(req.pod)
        pod(code if code is not None else self._pods.code(req.pod))
        code = self._ip_codes.get(req.pod_ip)
        pod_ip(code if code is not None else self._ips.code(req.pod_ip))
        conn_id(req.conn_id)
        new_conn(req.new_conn)
        queue_ms(req.queue_ms)
        service_ms(req.service_ms)
        proxy_queue_ms(req.proxy_queue_ms)
        proxy_upstream_ms(req.proxy_upstream_ms)

    def on_issued(self, issued: int, first_issue: float, last_issue: float) -> None:
        """The native client's issue counters (it reports each request's lateness with its record)."""
        self.issued = issued
        if issued:
            self.first_issue, self.last_issue = first_issue, last_issue

    def on_records(self, recs: np.ndarray[Any, np.dtype[np.void]], pod_table: list[str],
                   pod_ip_table: list[str]) -> None:
        """A batch of the native client's records (lbbench.load.native.RECORD), vectorised.

        The same bookkeeping as on_issue (lateness) and on_done (the rest) one by one; a record with
        error ABORTED (dropped by abort_all) counts for lateness only, as an aborted request of
        HttpClient reached on_issue but never on_done. `pod_table` and `pod_ip_table` are the
        engine's strings by code (all of them so far)."""
        if not len(recs):
            return
        late = recs["issued"] - recs["intended"]
        self._lateness.record_many(np.maximum(late, 0.0))
        recs = recs[recs["error"] >= 0]
        if not len(recs):
            return
        error = recs["error"].astype(np.int64)
        self.done += len(recs)
        counts = np.bincount(error, minlength=len(ERROR_TABLE))
        self.ok += int(counts[0])
        for code in np.flatnonzero(counts[1:]) + 1:
            self.errors[ERROR_TABLE[code]] += int(counts[code])
        ok = error == 0
        self.ok_while_sending += int(np.count_nonzero(recs["done"][ok] <= self.window_end))
        self._latency.record_many(recs["done"][ok] - recs["intended"][ok])
        statuses, n = np.unique(recs["status"][recs["status"] != 0], return_counts=True)
        for status, k in zip(statuses.tolist(), n.tolist(), strict=True):
            self.statuses[status] += k
        sent = recs["sent"]
        left = ~np.isnan(sent)
        sent, issued = sent[left], recs["issued"][left]
        self._pool_wait.record_many(np.maximum(sent - issued, 0.0))
        # fmax skips NaN: where `freed` is unknown the whole wait counts as the client's
        self._pool_wait_own.record_many(np.maximum(sent - np.fmax(issued, recs["freed"][left]), 0.0))
        if self.record_rows:
            self._extend(recs, pod_table, pod_ip_table)

    def _extend(self, recs: np.ndarray[Any, np.dtype[np.void]], pod_table: list[str], pod_ip_table: list[str]) -> None:
        t0 = self.start_at
        pods = self._recode(self._pods, self._engine_codes[0], pod_table)[recs["pod"]]
        ips = self._recode(self._ips, self._engine_codes[1], pod_ip_table)[recs["pod_ip"]]
        values = {"intended_s": recs["intended"] - t0, "sent_s": recs["sent"] - t0, "done_s": recs["done"] - t0,
                  "status": recs["status"], "error": recs["error"], "pod": pods, "pod_ip": ips,
                  "conn_id": recs["conn_id"], "new_conn": recs["new_conn"], "queue_ms": recs["queue_ms"],
                  "service_ms": recs["service_ms"], "proxy_queue_ms": recs["proxy_queue_ms"],
                  "proxy_upstream_ms": recs["proxy_upstream_ms"]}
        for name, col in self._cols.items():
            col.frombytes(np.ascontiguousarray(values[name], dtype=col.typecode).tobytes())

    @staticmethod
    def _recode(interner: _Interner, codes: list[int], table: list[str]) -> np.ndarray[Any, np.dtype[np.int64]]:
        """Engine code -> this recorder's code, for every string the engine has interned so far."""
        for text in table[len(codes):]:
            codes.append(interner.code(text))
        return np.array(codes, dtype=np.int64)

    def take_interval(self) -> tuple[LogHistogram, LogHistogram]:
        """The latency and lateness histograms since the last call (for progress reports)."""
        self._pool_wait.take_interval()  # keeps its interval part from growing; only totals are reported
        self._pool_wait_own.take_interval()
        return self._latency.take_interval(), self._lateness.take_interval()

    def counters(self) -> dict[str, Any]:
        return {"issued": self.issued, "done": self.done, "ok": self.ok, "ok_while_sending": self.ok_while_sending,
                "errors": dict(self.errors)}

    def columns(self) -> dict[str, Any]:
        """Rows as numpy columns plus the string tables of the coded columns."""
        out: dict[str, Any] = {name: np.array(col) for name, col in self._cols.items()}
        out["new_conn"] = out["new_conn"].astype(np.bool_)
        out["pod_table"] = list(self._pods.table)
        out["pod_ip_table"] = list(self._ips.table)
        return out
