"""The namespace's TCP counters: parsed by name from /proc/net/snmp and netstat, and they move."""

from __future__ import annotations

import socket
import time

from lbbench.system import tcpstat

SNMP = """\
Ip: Forwarding DefaultTTL
Ip: 1 64
Tcp: RtoAlgorithm ActiveOpens AttemptFails RetransSegs MaxConn
Tcp: 1 10 3 7 -1
"""
NETSTAT = """\
TcpExt: SyncookiesSent ListenDrops TCPSynRetrans
TcpExt: 0 4 9
"""


def test_sections_are_parsed_by_name() -> None:
    snmp = tcpstat.parse_snmp(SNMP)
    assert snmp["Tcp"]["RetransSegs"] == 7 and snmp["Tcp"]["AttemptFails"] == 3 and snmp["Tcp"]["MaxConn"] == -1
    assert snmp["Ip"]["DefaultTTL"] == 64
    assert tcpstat.parse_snmp(NETSTAT)["TcpExt"]["TCPSynRetrans"] == 9


def test_delta_is_counter_by_counter() -> None:
    assert tcpstat.delta({"a": 1, "b": 5}, {"a": 4, "b": 5, "c": 1}) == {"a": 3, "b": 0}
    assert tcpstat.delta(None, {"a": 1}) == {}


def test_a_dropped_syn_is_counted() -> None:
    """A listener whose accept queue is full drops the next SYNs; the kernel sends them again."""
    before = tcpstat.read_tcp_counters()
    assert before is not None and {"syn_retransmits", "listen_drops"} <= before.keys()
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(0)  # an accept queue of one, never accepted from
        clients = [socket.socket() for _ in range(4)]
        try:
            for c in clients:
                c.setblocking(False)
                c.connect_ex(server.getsockname())
            deadline = time.monotonic() + 5.0
            while time.monotonic() < deadline:
                after = tcpstat.read_tcp_counters()
                if tcpstat.delta(before, after).get("syn_retransmits", 0) > 0:
                    break
                time.sleep(0.1)
        finally:
            for c in clients:
                c.close()
    got = tcpstat.delta(before, after)
    assert got["syn_retransmits"] >= 1 and got["listen_drops"] >= 1
