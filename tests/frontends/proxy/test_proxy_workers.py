"""`lbbench serve proxy --workers N`: N whole proxies on one listening socket, one manager.

Requests through either worker reach the pod; the manager's /stats is the sum of the workers'
documents; an Endpoints update reaches every worker; 16 simultaneous keep-alive connections
are spread over 2 workers (the least loaded accepts); the workers die with the manager.
"""

from __future__ import annotations

import asyncio
import json
import signal

import psutil
from helpers.proxy import get_stats, keepalive_load, start_proxy

from lbbench.cluster.standalone import start_pod
from lbbench.frontends.proxy.stats import merge
from lbbench.system.control import send
from lbbench.system.procs import Supervisor

GET = b"GET / HTTP/1.1\r\nHost: default\r\n\r\n"


def test_two_workers_serve_share_connections_and_sum_their_stats() -> None:
    with Supervisor() as sup:
        _pod, backend = start_pod(sup, "pod-a", slots=64)
        # a short queue timeout: with no backend left, each request waits that long in the queue before its 503
        proxy = start_proxy(sup, [backend], "--workers", "2", "--maxconn", "0", "--queue-timeout", "0.2")
        replies = asyncio.run(keepalive_load(proxy.addr, GET, connections=16, requests=800))
        assert len(replies) >= 800 and all(r.status == 200 for r in replies)
        doc = get_stats(proxy.stats)
        workers = doc["workers"]
        assert len(workers) == 2 and len({w["pid"] for w in workers}) == 2
        assert doc["totals"]["client_requests"] == sum(w["client_requests"] for w in workers) >= 800
        # each worker accepted some of the 16 connections (a burst: the least loaded takes each)
        assert all(w["client_requests"] > 0 for w in workers), workers
        # an Endpoints update goes to every worker: the pod is removed, every request now fails with 503 (after
        # waiting its queue timeout: the queue absorbs a restart window, as in active-passive)
        assert send(proxy.child.stdin, {"endpoints": {"service": "default/default", "endpoints": []}})
        for _ in range(50):
            if all(s["backends"] == [] for s in get_stats(proxy.stats)["services"].values()):
                break
            asyncio.run(asyncio.sleep(0.05))
        replies = asyncio.run(keepalive_load(proxy.addr, GET, connections=4, requests=8))
        assert {r.status for r in replies} == {503}
        pids = [w["pid"] for w in workers]
        proxy.child.signal(signal.SIGKILL)  # no orphans: the workers go with their manager
        _gone, alive = psutil.wait_procs([psutil.Process(p) for p in pids if psutil.pid_exists(p)], timeout=10)
        assert not alive


def test_merge_sums_counts_keeps_maxima_and_the_first_text() -> None:
    a = {"pid": 1, "uptime_s": 3.0, "client_connections": 2, "listen": "127.0.0.1:80",
         "totals": {"client_requests": 10, "queue_wait_max_s": 0.5},
         "services": {"s": {"queue_len": 1, "backends": [{"addr": "x", "state": "up", "in_flight": 1}]}}}
    b = {"pid": 2, "uptime_s": 4.0, "client_connections": 3, "listen": "127.0.0.1:80",
         "totals": {"client_requests": 5, "queue_wait_max_s": 0.2, "retries": 1},
         "services": {"s": {"queue_len": 2, "backends": [{"addr": "x", "state": "down", "in_flight": 4}]}}}
    m = merge([a, b])
    assert m["client_connections"] == 5 and m["uptime_s"] == 4.0 and m["listen"] == "127.0.0.1:80"
    assert m["totals"] == {"client_requests": 15, "queue_wait_max_s": 0.5, "retries": 1}
    assert m["services"]["s"] == {"queue_len": 3, "backends": [{"addr": "x", "state": "up", "in_flight": 5}]}
    assert [w["pid"] for w in m["workers"]] == [1, 2]
    json.dumps(m)
