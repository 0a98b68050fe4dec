"""Network faults as nft rules, applied for real in a private namespace, seen through real sockets."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from lbbench.cluster.netfaults import NetworkFault, loss, render, silence, unreachable
from lbbench.system.netns import netns_argv, netns_unavailable_reason
from lbbench.system.procs import Supervisor

needs_netns = pytest.mark.skipif(netns_unavailable_reason() is not None,
                                 reason=f"no private user+net namespace with nft: {netns_unavailable_reason()}")


def test_the_table_is_rebuilt_whole_with_every_fault() -> None:
    faults = [silence("node_down node-1", ["127.11.0.0/16"]), loss("packet_loss 2%", ["127.10.0.3", "127.10.0.2"], 2),
              unreachable("pod_unreachable web-0", ["127.10.0.2"])]
    text = render(faults)
    assert text.startswith("table inet lbbench_faults {}\ndelete table inet lbbench_faults\n")
    assert 'ip daddr 127.11.0.0/16 drop comment "node_down node-1"' in text
    assert 'ip saddr 127.11.0.0/16 drop comment "node_down node-1"' in text
    assert "ip daddr { 127.10.0.2, 127.10.0.3 } numgen random mod 1000 < 20 drop" in text
    assert "ip daddr 127.10.0.2 reject with icmp type host-unreachable" in text
    assert "hook input" in render(faults[:1]) and "chain" not in render([])


PROBE = """
import asyncio, json, subprocess, sys, time
from lbbench.cluster.netfaults import NetworkFaults, loss, silence, unreachable

async def connect(ip: str, timeout_s: float = 0.6) -> str:
    try:
        async with asyncio.timeout(timeout_s):
            _, w = await asyncio.open_connection(ip, 8080)
        w.close()
        return "connected"
    except TimeoutError:
        return "timeout"
    except ConnectionRefusedError:
        return "refused"
    except OSError as e:
        return f"errno {e.errno}"

async def apply(text: str, reason: str) -> None:
    subprocess.run(["nft", "-f", "-"], input=text.encode(), check=True)

async def main() -> None:
    servers = [await asyncio.start_server(lambda r, w: w.close(), ip, 8080) for ip in ("127.11.0.2", "127.10.0.2")]
    faults = NetworkFaults(apply)
    out = {"before": await connect("127.11.0.2"), "closed_port_before": await connect("127.11.0.9")}
    await faults.add("n", silence("node_down node-1", ["127.11.0.0/16"]))
    out["silenced"] = await connect("127.11.0.2")
    out["silenced_closed_port"] = await connect("127.11.0.9")  # no RST either
    out["other_node"] = await connect("127.10.0.2")
    await faults.add("u", unreachable("pod_unreachable", ["127.10.0.2"]))
    out["unreachable"] = await connect("127.10.0.2")
    await faults.heal("n")
    await faults.heal("u")
    out["healed"] = [await connect("127.11.0.2"), await connect("127.10.0.2")]
    await faults.add("l", loss("packet_loss", ["127.10.0.2"], 100.0))
    out["all_lost"] = await connect("127.10.0.2")
    await faults.clear()
    out["cleared"] = subprocess.run(["nft", "list", "ruleset"], capture_output=True, text=True).stdout
    print(json.dumps(out))
    for s in servers:
        s.close()

asyncio.run(main())
"""


@needs_netns
def test_faults_seen_through_sockets(supervisor: Supervisor) -> None:
    child = supervisor.spawn("netns", netns_argv([sys.executable, "-c", PROBE]), stdin=subprocess.DEVNULL,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = child.popen.communicate(timeout=90)
    assert child.popen.returncode == 0, err.decode()[-3000:]
    r = json.loads(out)
    assert r["before"] == "connected" and r["closed_port_before"] == "refused"
    assert r["silenced"] == "timeout" and r["silenced_closed_port"] == "timeout"  # silent: no RST
    assert r["other_node"] == "connected"
    assert r["unreachable"] == "errno 113"  # EHOSTUNREACH, from the ICMP answer
    assert r["healed"] == ["connected", "connected"]
    assert r["all_lost"] == "timeout"
    assert r["cleared"].strip() == ""


def test_a_fault_names_its_rules() -> None:
    assert NetworkFault("x", ("ip daddr 127.1.0.1 drop",)).rules == ("ip daddr 127.1.0.1 drop",)
