"""The Services of one count of the sweep: N in rule order, a few of them under test.

kube-proxy's iptables mode walks ``KUBE-SERVICES`` in the order it wrote it, which follows Go
map iteration: a Service's position is random. So the Services under test sit at seeded random
positions (the same seed and count give the same positions); every other Service points at
fake endpoints that need no live pod, as kube-proxy's own scale tests do. Pure data.
"""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Sequence
from dataclasses import dataclass

from lbbench.model.addresses import HostPort
from lbbench.model.service import Endpoint, ServiceSpec

NAMESPACE = "scale"
SERVICE_PORT = 80
_CLUSTER_IPS = int(ipaddress.IPv4Address("127.32.0.0"))  # 127.32.0.1 .. (ClusterIPs, by position)
_FAKE_ENDPOINTS = int(ipaddress.IPv4Address("127.64.0.0"))  # 127.64.0.1 .. (never bound)
_CHANGED_ENDPOINTS = int(ipaddress.IPv4Address("127.80.0.0"))  # the sync probe's alternative endpoints


def _ip(base: int, n: int) -> str:
    return str(ipaddress.IPv4Address(base + 1 + n))


@dataclass(frozen=True)
class ScaleLayout:
    services: tuple[ServiceSpec, ...]  # in rule order
    endpoints: dict[str, tuple[Endpoint, ...]]
    positions: dict[str, int]  # Service under test -> its index in `services`

    @property
    def under_test(self) -> list[ServiceSpec]:
        return [self.services[i] for i in self.positions.values()]

    @property
    def endpoint_count(self) -> int:
        return sum(len(eps) for eps in self.endpoints.values())

    def changed_service(self) -> ServiceSpec:
        """A Service not under test, in the middle of the order: the one whose endpoints the sync probe moves."""
        taken = set(self.positions.values())
        middle = len(self.services) // 2
        order: list[int] = [*range(middle, len(self.services)), *range(middle)]
        index: int = next(i for i in order if i not in taken)
        return self.services[index]


def positions_for(count: int, under_test: int, seed: int) -> list[int]:
    """Seeded random positions (sorted) of the Services under test among `count`."""
    return sorted(random.Random(f"lbbench-scale/{seed}/{count}").sample(range(count), under_test))


def fake_endpoints(position: int, per: int, base: int = _FAKE_ENDPOINTS, target_port: int = 8080) \
        -> tuple[Endpoint, ...]:
    return tuple(Endpoint(f"fake-{position}-{j}", _ip(base, position * per + j), target_port) for j in range(per))


def moved_endpoints(round_: int, per: int) -> tuple[Endpoint, ...]:
    """The changed Service's endpoints for sync probe round `round_`: every round a different set."""
    return fake_endpoints(round_, per, _CHANGED_ENDPOINTS)


def build_layout(count: int, per: int, under_test: int, seed: int, pods: Sequence[HostPort]) -> ScaleLayout:
    """`count` ClusterIP Services; those under test are served by `pods` (one endpoint each)."""
    chosen = positions_for(count, under_test, seed)
    names = {pos: f"test-{k}" for k, pos in enumerate(chosen)}
    port = pods[0].port if pods else 8080
    services: list[ServiceSpec] = []
    endpoints: dict[str, tuple[Endpoint, ...]] = {}
    for i in range(count):
        spec = ServiceSpec(names.get(i, f"svc-{i}"), NAMESPACE, "ClusterIP", _ip(_CLUSTER_IPS, i), SERVICE_PORT, port)
        services.append(spec)
        endpoints[spec.key] = (tuple(Endpoint(f"pod-{j}", p.host, p.port) for j, p in enumerate(pods))
                               if i in names else fake_endpoints(i, per, target_port=port))
    return ScaleLayout(tuple(services), endpoints, {f"{NAMESPACE}/{names[i]}": i for i in chosen})
