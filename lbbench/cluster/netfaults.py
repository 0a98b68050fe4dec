"""Network faults as nft rules in the run's own network namespace: silence, loss, unreachable.

A dead node or a cut cable answers nothing: packets to its addresses are dropped (no RST,
no ICMP), so a client's SYN is retransmitted into the void until its connect timeout.
`packet_loss` drops a share of the packets to some addresses at random (a lost SYN costs
Linux's 1 s initial retransmission timeout); `pod_unreachable` answers ICMP host-unreachable,
as a node does whose pod network was torn down while the pod's endpoint is still programmed.

All active faults are one table, rewritten whole in one ``nft -f`` transaction at every
change (atomic: there is never a moment with half the faults). The table hooks `input`,
where loopback packets arrive after the kernel front ends' DNAT in `output`, so a fault hits
the pod's real address whichever front end chose it. The rules are applied only through the
`apply` callable the phase gives (nft inside lbbench's private namespace); every applied
file is kept with its apply time.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

TABLE = "inet lbbench_faults"
ApplyRules = Callable[[str, str], Awaitable[object]]  # (nft text, reason)


@dataclass(frozen=True)
class NetworkFault:
    """One active fault: what it is (for the comment) and its rules' match and verdict."""

    name: str  # e.g. "partition node-1"
    rules: tuple[str, ...]


def _addresses(addrs: Sequence[str]) -> str:
    return addrs[0] if len(addrs) == 1 else "{ " + ", ".join(sorted(addrs)) + " }"


def silence(name: str, networks: Sequence[str], both_ways: bool = True) -> NetworkFault:
    """Every packet to (and, `both_ways`, from) the networks dropped: no RST, no ICMP."""
    rules = [f"ip daddr {_addresses(networks)} drop"]
    if both_ways:
        rules.append(f"ip saddr {_addresses(networks)} drop")
    return NetworkFault(name, tuple(rules))


def loss(name: str, addrs: Sequence[str], percent: float) -> NetworkFault:
    """`percent` of the packets to `addrs` dropped at random (per packet, in 0.1% steps)."""
    per_mille = round(percent * 10)
    if per_mille <= 0:
        return NetworkFault(name, ())
    share = "" if per_mille >= 1000 else f" numgen random mod 1000 < {per_mille}"
    return NetworkFault(name, (f"ip daddr {_addresses(addrs)}{share} drop",))


def unreachable(name: str, addrs: Sequence[str]) -> NetworkFault:
    """New packets to `addrs` answered with ICMP host-unreachable."""
    return NetworkFault(name, (f"ip daddr {_addresses(addrs)} reject with icmp type host-unreachable",))


def render(faults: Sequence[NetworkFault]) -> str:
    """The whole table: created if missing, deleted, and rebuilt, in one transaction."""
    lines = [f"table {TABLE} {{}}", f"delete table {TABLE}"]
    if not faults:
        return "\n".join(lines) + "\n"
    lines += [f"table {TABLE} {{", "  chain input {",
              "    type filter hook input priority -150; policy accept;"]
    for f in faults:
        comment = f.name.replace('"', "'")
        lines += [f'    {rule} comment "{comment}"' for rule in f.rules]
    lines += ["  }", "}"]
    return "\n".join(lines) + "\n"


class NetworkFaults:
    """The run's active network faults; each change applies the whole table again."""

    def __init__(self, apply: ApplyRules) -> None:
        self._apply = apply
        self.active: dict[str, NetworkFault] = {}

    async def add(self, key: str, fault: NetworkFault) -> None:
        self.active[key] = fault
        await self._apply(render(list(self.active.values())), f"add {fault.name}")

    async def heal(self, key: str) -> None:
        fault = self.active.pop(key, None)
        if fault is not None:
            await self._apply(render(list(self.active.values())), f"heal {fault.name}")

    async def clear(self) -> None:
        """Remove the table (the namespace would drop it anyway when its last process exits)."""
        self.active.clear()
        await self._apply(f"table {TABLE} {{}}\ndelete table {TABLE}\n", "stop: every fault removed")
