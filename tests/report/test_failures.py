"""The per-event failure rows: errors by kind, detection, window and recovery, from events and rows."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pandas as pd

from lbbench.report.doc import Table
from lbbench.report.failures import event_costs, failure_sections, in_short


def _results() -> Any:
    events = pd.DataFrame([
        (2.0, "event", "node/node-1", "node_down", "kernel-nftables"),
        (2.1, "network_fault", "node_down node-1", "ip daddr 127.11.0.0/16 drop", "kernel-nftables"),
        (5.0, "endpoints_synced", "default/web", "2 a=127.10.0.2 b=127.10.0.3", "kernel-nftables"),
        (2.0, "event", "node/node-1", "node_down", "l7-proxy"),
    ], columns=["at_s", "kind", "target", "detail", "frontend"])
    rows = []
    for fe in ("kernel-nftables", "l7-proxy"):
        for i in range(80):
            t = i * 0.1
            failed = fe == "kernel-nftables" and 2.2 <= t < 4.0 and i % 2 == 0
            rows.append((fe, t, 1.0 if failed else 0.01, "connect_timeout" if failed else ""))
    requests = pd.DataFrame(rows, columns=["frontend", "intended_s", "latency_s", "error"])
    return SimpleNamespace(events=events, requests=requests)


def test_costs_per_event_and_front_end() -> None:
    costs = {c.frontend: c for c in event_costs(_results())}
    nft, proxy = costs["kernel-nftables"], costs["l7-proxy"]
    assert nft.event == "node_down node/node-1" and nft.at_s == 2.0
    assert nft.errors == {"connect_timeout": 9} and nft.requests == 60
    assert abs((nft.detect_s or 0) - (5.0 - 2.2)) < 1e-6  # first failure to the first sync
    assert abs((nft.window_s or 0) - 1.6) < 1e-6 and abs((nft.recovery_s or 0) - (3.8 + 1.0 - 2.0)) < 1e-6
    assert proxy.failed == 0 and proxy.detect_s is None and proxy.recovery_s is None
    assert nft.detected_by == "Endpoints sync" and proxy.detected_by is None
    text = in_short(list(costs.values()))
    assert "hidden from clients by l7-proxy" in text and "kernel-nftables (9 failed: connect_timeout 9)" in text


def test_skipped_network_faults_are_listed_with_the_reason() -> None:
    r = _results()
    r.events.loc[len(r.events)] = (1.0, "network_fault_skipped", "partition node-1",
                                   "partition: the run is not in a private network namespace", "userspace-dnat")
    (section,) = failure_sections(r)
    assert any("not played (partition: the run is not in a private network namespace)" in item
               for b in section.blocks for item in getattr(b, "items", ()))


def test_a_proxy_check_that_marks_the_backend_down_first_is_the_detection() -> None:
    """The earlier of the Endpoints sync and the front end's own check; without the check, the sync."""
    r = _results()
    r.events.loc[len(r.events)] = (5.0, "endpoints_synced", "default/web", "2 a=127.10.0.2", "l7-proxy")
    without = {c.frontend: c for c in event_costs(r)}["l7-proxy"]
    # nothing failed: timed from the event
    assert without.detected_by == "Endpoints sync" and abs((without.detect_s or 0) - 3.0) < 1e-6
    r.events.loc[len(r.events)] = (2.45, "backend_down", "web-1", "2 check(s) failed, the last unreachable",
                                   "l7-proxy")
    costs = {c.frontend: c for c in event_costs(r)}
    proxy, nft = costs["l7-proxy"], costs["kernel-nftables"]
    assert proxy.detected_by == "health check" and abs((proxy.detect_s or 0) - 0.45) < 1e-6
    assert nft.detected_by == "Endpoints sync" and abs((nft.detect_s or 0) - 2.8) < 1e-6  # the proxy's check is not its
    (section,) = failure_sections(r)
    table = next(b for b in section.blocks if isinstance(b, Table))
    assert "detected by" in table.headers and ("health check" in {row[7] for row in table.rows})
