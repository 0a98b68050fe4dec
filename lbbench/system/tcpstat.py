"""The network namespace's TCP counters, from /proc/net/snmp and /proc/net/netstat.

A dropped SYN (a full accept queue, a conntrack or TIME_WAIT tuple clash) is not an error the
client sees: the kernel sends the SYN again after 1 s, and the request is merely late. So a
throughput comparison reads these counters before and after each peer's round to say how many
connection attempts had to be retried. /proc/net/* is per network namespace: read from a process
inside lbbench's namespace they count only what ran there.
"""

from __future__ import annotations

from collections.abc import Mapping

# (file, section, counter) -> our name
COUNTERS: dict[tuple[str, str, str], str] = {
    ("/proc/net/netstat", "TcpExt", "TCPSynRetrans"): "syn_retransmits",
    ("/proc/net/netstat", "TcpExt", "ListenDrops"): "listen_drops",
    ("/proc/net/snmp", "Tcp", "RetransSegs"): "retransmitted_segments",
    ("/proc/net/snmp", "Tcp", "AttemptFails"): "connect_attempt_fails",
}


def parse_snmp(text: str) -> dict[str, dict[str, int]]:
    """The "Section: names" / "Section: values" line pairs of /proc/net/snmp or netstat, by section."""
    out: dict[str, dict[str, int]] = {}
    lines = text.splitlines()
    for names, values in zip(lines[::2], lines[1::2], strict=False):
        section, _, keys = names.partition(":")
        vsection, _, vals = values.partition(":")
        if section != vsection:
            continue
        out[section] = {k: int(v) for k, v in zip(keys.split(), vals.split(), strict=False)
                        if v.lstrip("-").isdigit()}
    return out


def read_tcp_counters() -> dict[str, int] | None:
    """This namespace's counters of :data:`COUNTERS`, or None where /proc/net cannot be read."""
    sections: dict[str, dict[str, dict[str, int]]] = {}
    out: dict[str, int] = {}
    for (path, section, key), name in COUNTERS.items():
        if path not in sections:
            try:
                with open(path, encoding="ascii") as f:
                    sections[path] = parse_snmp(f.read())
            except OSError:
                return None
        value = sections[path].get(section, {}).get(key)
        if value is not None:
            out[name] = value
    return out


def delta(before: Mapping[str, int] | None, after: Mapping[str, int] | None) -> dict[str, int]:
    """after - before, counter by counter ({} if either is missing)."""
    if before is None or after is None:
        return {}
    return {k: after[k] - before[k] for k in after if k in before}
