"""The ``[scale]`` table: a Service-count sweep of the DNAT data planes (see configs/README.md).

With ``[scale]`` in a config, ``lbbench run`` installs each count of Services in each DNAT
front end of ``[run].frontends`` and measures first-packet latency and sync cost, instead of
the load phases.
"""

from __future__ import annotations

from dataclasses import dataclass

from lbbench.config.reader import Table

MAX_SERVICES = 65_000  # ClusterIPs are numbered inside one /16
IPTABLES_BACKENDS = ("auto", "legacy", "nft")


@dataclass(frozen=True)
class ScaleConfig:
    services: tuple[int, ...] = (10, 1000, 5000, 10_000)
    endpoints_per_service: int = 2
    under_test: int = 5  # Services measured, at seeded random positions of the rule order
    connections: int = 2000  # new connections measured per count and front end
    rate_rps: float = 500.0  # open loop, constant arrivals
    endpoint_changes: int = 5  # one-endpoint syncs timed per count
    full_resyncs: int = 2  # full resyncs timed per count
    iptables_backends: tuple[str, ...] = ("legacy",)


def parse_scale(t: Table) -> ScaleConfig | None:
    """None when the config has no ``[scale]`` table."""
    if not t.data:
        return None
    d = ScaleConfig()
    counts = t.num_list("services", list(d.services))
    if not counts or any(c != int(c) or not 1 <= c <= MAX_SERVICES for c in counts):
        raise t.fail("services", f"expected a non-empty array of whole numbers in 1..{MAX_SERVICES}, got "
                                 f"{list(counts)!r}")
    backends = t.str_list("iptables_backends", list(d.iptables_backends))
    for i, b in enumerate(backends):
        if b not in IPTABLES_BACKENDS:
            raise t.fail(f"iptables_backends[{i}]", f"expected one of {', '.join(IPTABLES_BACKENDS)}, got {b!r}")
    if not backends or len(set(backends)) != len(backends):
        raise t.fail("iptables_backends", f"expected distinct backends, at least one; got {list(backends)!r}")
    c = ScaleConfig(
        services=tuple(sorted({int(n) for n in counts})),
        endpoints_per_service=t.integer("endpoints_per_service", d.endpoints_per_service, 1, 16),
        under_test=t.integer("under_test", d.under_test, 1, 20),
        connections=t.integer("connections", d.connections, 10, 1_000_000),
        rate_rps=t.number("rate", d.rate_rps, 1.0, 5000.0),
        endpoint_changes=t.integer("endpoint_changes", d.endpoint_changes, 1, 100),
        full_resyncs=t.integer("full_resyncs", d.full_resyncs, 0, 20),
        iptables_backends=backends,
    )
    if c.under_test > min(c.services):
        raise t.fail("under_test", f"must be <= the smallest Service count ({min(c.services)}), got {c.under_test}")
    t.done()
    return c
