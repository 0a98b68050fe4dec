"""Network faults end to end (issue 14): a silent node, a partition that heals, lossy links.

Real runs in lbbench's own namespace: nft rules there, real pods, front ends and load. After
every run the host's netfilter is exactly as before and no process of the run is left.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import psutil
import pytest

from lbbench.system.netns import find_tool, netns_unavailable_reason
from lbbench.system.procs import lbbench_argv

pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    netns_unavailable_reason() is not None, reason=f"no private namespace with nft: {netns_unavailable_reason()}")]

BASE = 74  # nodes in 127.74.0.0/16 and 127.75.0.0/16
CONFIG = """
[cluster]
nodes = 2
node_ip_base = {base}
[[deployments]]
name = "web"
replicas = 4
[deployments.template]
service = "const:2ms"
[deployments.template.readiness]
period = "100ms"
[[services]]
name = "web"
selector = {{ app = "web" }}
[load]
rate = {rate}
connections = "close"
connect_timeout = "{connect_timeout}"
timeout = "3s"
[proxy]
connect_timeout = "200ms"
[run]
duration = "{duration}"
warmup = "300ms"
endpoint_sync_delay = "300ms"
restart_delay = "200ms"
node_grace_period = "{grace}"
frontends = [{frontends}]
{events}
"""


def _host_netfilter() -> dict[str, str]:
    out = {}
    for name, argv in (("nft", ["nft", "list", "ruleset"]), ("iptables", ["iptables-save"])):
        if (tool := find_tool(argv[0])) is not None:
            r = subprocess.run([tool, *argv[1:]], capture_output=True, text=True, timeout=30)
            # iptables-save stamps the time it ran; the rules are what must not change
            out[name] = "\n".join(ln for ln in r.stdout.splitlines() if not ln.startswith("#"))
    return out


def _ours() -> list[str]:
    """Processes of a run of this module: they all bind addresses in our node blocks."""
    found = []
    for p in psutil.process_iter(["cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if f"127.{BASE}." in cmd or f"127.{BASE + 1}." in cmd or "lbbench-nettest" in cmd:
            found.append(cmd[:120])
    return found


@pytest.fixture
def host_untouched() -> Iterator[None]:
    before = _host_netfilter()
    yield
    assert _host_netfilter() == before  # the rules lived (and died) in the run's own namespace
    assert _ours() == []


def run(tmp_path: Path, frontends: list[str], events: str, *, duration: str = "8s", grace: str = "3s",
        rate: int = 80, connect_timeout: str = "1s") -> tuple[dict[str, object], pd.DataFrame, pd.DataFrame]:
    config = tmp_path / "lbbench-nettest.toml"
    config.write_text(CONFIG.format(base=BASE, rate=rate, connect_timeout=connect_timeout, duration=duration,
                                    grace=grace, frontends=", ".join(f'"{f}"' for f in frontends), events=events))
    out = tmp_path / "out"
    proc = subprocess.run(lbbench_argv("run", str(config), "--out", str(out), "--quiet"), capture_output=True,
                          text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    return summary, pd.read_parquet(out / "requests.parquet"), pd.read_csv(out / "events.csv", keep_default_na=False)


NODE_DOWN = """
[[events]]
at = "2s"
action = "node_down"
target = "node/node-1"
"""


def test_a_dead_node_is_silent(tmp_path: Path, host_untouched: None) -> None:
    _, rows, events = run(tmp_path, ["kernel-nftables", "userspace-dnat"], NODE_DOWN)
    for fe in ("kernel-nftables", "userspace-dnat"):
        ev = events[events["frontend"] == fe]
        silenced = ev.loc[ev["kind"] == "network_fault", "at_s"]
        assert len(silenced) == 1, "the node's addresses were silenced by an nft rule"
        after = rows[(rows["frontend"] == fe) & (rows["sent_s"] > float(silenced.iloc[0]) + 0.05)]
        kinds = set(after.loc[after["error"] != "", "error"])
        assert after["error"].ne("").sum() > 5  # DNAT kept choosing the dead node's pods
        assert "refused" not in kinds and "reset" not in kinds  # never a fast refusal
        if fe == "kernel-nftables":  # the client's own SYN into the void: its connect timeout
            assert kinds == {"connect_timeout"}
            lat = after.loc[after["error"] == "connect_timeout", "latency_s"]
            assert lat.min() >= 0.99 and lat.median() < 1.3
        else:  # the forwarder accepted at once; its upstream SYN goes nowhere: the client's read timeout
            assert kinds == {"timeout"}
    applied = (tmp_path / "out" / "frontends" / "kernel-nftables" / "netfaults" / "applies.jsonl").read_text()
    assert "add node_down node-1" in applied  # every rule kept with its apply time


PARTITION = """
[[events]]
at = "1s"
action = "partition"
target = "node/node-1"
duration = "3s"
"""


def test_a_partition_heals_and_stale_pods_are_deleted(tmp_path: Path, host_untouched: None) -> None:
    _, _, events = run(tmp_path, ["userspace-dnat"], PARTITION, duration="8s", grace="1s")
    kinds = list(events["kind"])
    for k in ("network_fault", "node_partitioned", "node_not_ready", "network_healed", "node_reconnected"):
        assert k in kinds, k
    stale = events[events["kind"] == "pod_deleted_stale"]
    assert len(stale) == 2  # the node's two pods, evicted while it was cut off
    started = events[events["kind"] == "pod_started"]
    gone = set(events.loc[events["kind"].isin(["pod_deleted", "pod_died"]), "target"])
    live = started[~started["target"].isin(gone)]
    # The Service ends the run with its replicas: the evicted pods replaced on the healthy node
    # (how soon they turn ready depends on the machine; on this one a pod start can take 15 s)
    assert len(live) == 4 and live["detail"].str.contains("node=node-0").all()
    assert set(stale["target"]) <= gone
    synced = events.loc[events["kind"] == "endpoints_synced", "detail"]
    assert not any(p in d for d in synced[synced.index > stale.index.max()] for p in stale["target"])


LOSS = """
[[events]]
at = "0s"
action = "packet_loss"
target = "service/web"
percent = {percent}
"""


@pytest.mark.parametrize("percent", [2, 0])
def test_packet_loss_puts_syn_retransmits_in_the_tail(tmp_path: Path, percent: int, host_untouched: None) -> None:
    _, rows, _ = run(tmp_path, ["kernel-nftables"], LOSS.format(percent=percent), duration="10s", rate=100,
                     connect_timeout="3s")
    slow = (rows["latency_s"] >= 1.0).mean()
    if percent:
        assert 0.005 <= slow <= 0.06, f"{slow:.2%} of requests took >= 1 s"
    else:
        assert slow <= 0.002, f"{slow:.2%} of requests took >= 1 s without loss"
