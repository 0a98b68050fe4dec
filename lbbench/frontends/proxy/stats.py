"""The proxy's stats endpoint, on its own loopback port: JSON at /stats, Prometheus text at /metrics.

The JSON document is what the L7Proxy front end polls (every 100 ms during a run), so it is
built from counters the hot path already keeps: no histogram, no per-request work here.
`flatten` turns it into the flat `counters()` dict the runner samples into its time series.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Callable
from typing import Any, cast

from httptools import HttpParserError, HttpRequestParser

from lbbench.frontends.proxy.http import error_response

SCHEMA = 1


def totals(app_counters: dict[str, int], services: dict[str, dict[str, Any]]) -> dict[str, float]:
    """Proxy-wide numbers: client-side counters plus the sum over Services."""
    out: dict[str, float] = {k: float(v) for k, v in app_counters.items()}
    out["queue_len"] = float(sum(s["queue_len"] for s in services.values()))
    out["in_flight_total"] = float(sum(s["in_flight"] for s in services.values()))
    out["queue_wait_sum_s"] = sum(s["queue_wait_sum_s"] for s in services.values())
    out["queue_wait_max_s"] = max((s["queue_wait_max_s"] for s in services.values()), default=0.0)
    for s in services.values():
        for k, v in s["counters"].items():
            out[k] = out.get(k, 0.0) + v
    for k in ("retries", "queue_timeouts", "queue_full", "ejections", "failed_in_flight", "connect_failed",
              "requests", "queued"):
        out.setdefault(k, 0.0)
    return out


def flatten(snapshot: dict[str, Any]) -> dict[str, float]:
    """The runner's view: totals, plus in_flight/queue_len per Service and in_flight per backend."""
    flat = {k: float(v) for k, v in snapshot["totals"].items()}
    flat["client_connections"] = float(snapshot["client_connections"])
    for key, svc in snapshot["services"].items():
        flat[f"queue_len[{key}]"] = float(svc["queue_len"])
        for b in svc["backends"]:
            flat[f"in_flight[{key}/{b['pod'] or b['addr']}]"] = float(b["in_flight"])
    return flat


def _label(value: object) -> str:
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def prometheus(snapshot: dict[str, Any]) -> str:
    lines: list[str] = []

    def metric(name: str, kind: str, help_: str, samples: list[tuple[dict[str, object], float]]) -> None:
        lines.append(f"# HELP lbbench_proxy_{name} {help_}")
        lines.append(f"# TYPE lbbench_proxy_{name} {kind}")
        for labels, value in samples:
            text = ",".join(f'{k}="{_label(v)}"' for k, v in labels.items())
            lines.append(f"lbbench_proxy_{name}{{{text}}} {value:g}" if text else f"lbbench_proxy_{name} {value:g}")

    svcs: dict[str, dict[str, Any]] = snapshot["services"]
    metric("client_connections", "gauge", "Open client connections.", [({}, snapshot["client_connections"])])
    metric("queue_length", "gauge", "Requests waiting in the central queue.",
           [({"service": k}, s["queue_len"]) for k, s in svcs.items()])
    metric("queue_wait_seconds_sum", "counter", "Total time requests waited in the queue.",
           [({"service": k}, s["queue_wait_sum_s"]) for k, s in svcs.items()])
    metric("queue_wait_seconds_max", "gauge", "Longest time a request waited in the queue.",
           [({"service": k}, s["queue_wait_max_s"]) for k, s in svcs.items()])
    metric("events_total", "counter", "Per-Service events (requests, retries, queue_timeouts, ejections...).",
           [({"service": k, "event": e}, v) for k, s in svcs.items() for e, v in sorted(s["counters"].items())])
    client = {k: v for k, v in snapshot["client"].items()}
    metric("client_events_total", "counter", "Client-side events (responses by class, client errors...).",
           [({"event": e}, v) for e, v in sorted(client.items())])
    backends = [(k, b) for k, s in svcs.items() for b in s["backends"]]
    metric("backend_in_flight", "gauge", "Requests in flight per backend.",
           [({"service": k, "backend": b["addr"], "pod": b["pod"]}, b["in_flight"]) for k, b in backends])
    metric("backend_up", "gauge", "1 when the backend takes requests.",
           [({"service": k, "backend": b["addr"], "pod": b["pod"], "state": b["state"]},
             1.0 if b["state"] == "up" else 0.0) for k, b in backends])
    for field in ("requests", "responses", "failures", "connect_failures", "resets", "timeouts", "ejections"):
        metric(f"backend_{field}_total", "counter", f"Per-backend {field.replace('_', ' ')}.",
               [({"service": k, "backend": b["addr"], "pod": b["pod"]}, b[field]) for k, b in backends])
    return "\n".join(lines) + "\n"


class StatsProtocol(asyncio.Protocol):
    """GET /stats and GET /metrics, keep-alive; anything else 404."""

    def __init__(self, snapshot: Callable[[], dict[str, Any]]) -> None:
        self.snapshot = snapshot
        self.transport: asyncio.Transport | None = None
        self.parser = HttpRequestParser(self)
        self.url = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports are not subclasses

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except HttpParserError:
            if self.transport is not None:
                self.transport.write(error_response(400, "malformed request"))
                self.transport.close()

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_message_complete(self) -> None:
        path, self.url = self.url.split(b"?", 1)[0], b""
        self.reply(path, self.parser.should_keep_alive(), self.snapshot)

    def reply(self, path: bytes, keep: bool, snapshot: Callable[[], dict[str, Any]]) -> None:
        if path == b"/stats":
            body, ctype = json.dumps(snapshot()).encode(), b"application/json"
        elif path == b"/metrics":
            body, ctype = prometheus(snapshot()).encode(), b"text/plain; version=0.0.4"
        else:
            if self.transport is not None:
                self.transport.write(error_response(404, "try /stats or /metrics", keep_alive=keep))
            return
        if self.transport is None:
            return
        self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Type: " + ctype + b"\r\nContent-Length: "
                             + str(len(body)).encode() + (b"\r\n\r\n" if keep else b"\r\nConnection: close\r\n\r\n")
                             + body)
        if not keep:
            self.transport.close()


def document(app_counters: dict[str, int], services: dict[str, dict[str, Any]], *, listen: str,
             started_s: float, client_connections: int) -> dict[str, Any]:
    return {
        "schema": SCHEMA, "frontend": "l7-proxy", "pid": os.getpid(), "listen": listen,
        "uptime_s": round(time.monotonic() - started_s, 3), "client_connections": client_connections,
        "totals": totals(app_counters, services), "client": dict(app_counters), "services": services,
    }


async def fetch(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> dict[str, Any]:
    """GET /stats over a kept-alive connection to a proxy's stats port; its document."""
    writer.write(b"GET /stats HTTP/1.1\r\nHost: stats\r\n\r\n")
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    doc = json.loads(await reader.readexactly(length))
    if not isinstance(doc, dict):
        raise ValueError("stats document is not an object")
    return doc


def merge(docs: list[dict[str, Any]]) -> dict[str, Any]:
    """The documents of N workers as one proxy's: counts and gauges summed, maxima kept the largest.

    Every worker serves the same Services and backends in the same order (one plan, the same
    Endpoints updates), so lists (a Service's backends) merge element by element; text (an
    address, a state) is the first worker's. A backend's state can differ between workers (each
    checks health on its own): the first worker's is shown.
    """
    out = _merge_values(docs)
    out["pid"] = os.getpid()
    out["workers"] = [{"pid": d.get("pid"), "client_connections": d.get("client_connections", 0),
                       "client_requests": d.get("totals", {}).get("client_requests", 0)} for d in docs]
    return cast(dict[str, Any], out)


def _merge_values(values: list[Any]) -> Any:
    first = values[0]
    if isinstance(first, dict):
        keys = list(dict.fromkeys(k for v in values if isinstance(v, dict) for k in v))
        return {k: (max(vs) if k.endswith("_max_s") or k == "uptime_s" else _merge_values(vs))
                for k in keys if (vs := [v[k] for v in values if isinstance(v, dict) and k in v])}
    if isinstance(first, list):
        return [_merge_values([v[i] for v in values if isinstance(v, list) and i < len(v)])
                for i in range(len(first))]
    if isinstance(first, bool) or not isinstance(first, int | float):
        return first
    return sum(v for v in values if isinstance(v, int | float))
