"""ebpf-socketlb: Cilium-style socket-level balancing, at connect() time, in a cgroup hook.

Cilium's kube-proxy replacement balances a Service before the SYN exists: a
``cgroup/connect4`` program looks the destination up in a map of Services and rewrites it
to a backend picked at random; no per-packet NAT and no conntrack entry for the Service
hop. ``getpeername4``/``recvmsg4`` give the client the Service address back (the reverse
translation, on unless ``[cluster] socket_lb_reverse = false``). The program is
``bpf/socketlb.bpf.c``; its object ships pre-compiled.

Per run, lbbench makes a cgroup (:mod:`lbbench.system.cgroup`), loads the object with
libbpf (:mod:`lbbench.system.libbpf`) and attaches the programs to that cgroup through
bpf_link: only processes started inside it (the load generator's workers, through
:meth:`client_cgroup`) are balanced; nothing else on the machine is. The links die with
lbbench's fds, so even a SIGKILL leaves no program attached.

An Endpoints sync writes the new backend set in one batched map update under a fresh
revision, then switches each of the Service's entries (ClusterIP:port, every node
IP:NodePort, the LoadBalancer IP:port, as Cilium adds them) with one update each, then
deletes the old revision's backends. A Service without endpoints has count 0: connect()
fails with ECONNREFUSED, as kube-proxy's reject rule makes it.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import socket
import struct
import time
from collections.abc import Sequence
from pathlib import Path

from lbbench.errors import UserError
from lbbench.frontends.base import Entrypoint, Frontend, FrontendPlan
from lbbench.frontends.dnat.plan import node_port_addrs, service_entrypoint, validate_service
from lbbench.model.addresses import HostPort
from lbbench.model.service import Endpoint, ServiceSpec, ServiceType
from lbbench.system import cgroup, libbpf
from lbbench.system.netns import real_root
from lbbench.system.procs import Supervisor

OBJECT = Path(__file__).resolve().parent / "bpf" / "socketlb.bpf.o"
CONNECT = "connect4"
REVERSE = ("getpeername4", "recvmsg4")
PROGRAMS = (CONNECT, *REVERSE)
STATS = ("bpf_balanced_total", "bpf_refused_total", "bpf_no_backend_total", "bpf_reverse_total")
SETTING_REVERSE = 0


class ServiceKey(ctypes.Structure):
    _fields_ = (("ip", ctypes.c_uint32), ("port", ctypes.c_uint16), ("pad", ctypes.c_uint16))


class ServiceValue(ctypes.Structure):
    _fields_ = (("revision", ctypes.c_uint32), ("count", ctypes.c_uint32))


class BackendKey(ctypes.Structure):
    _fields_ = (("revision", ctypes.c_uint32), ("slot", ctypes.c_uint32))


class BackendValue(ctypes.Structure):
    _fields_ = (("ip", ctypes.c_uint32), ("port", ctypes.c_uint16), ("pad", ctypes.c_uint16))


def _wire(addr: HostPort) -> tuple[int, int]:
    """(ip, port) as the kernel's user_ip4/user_port hold them: network byte order in memory."""
    return struct.unpack("=I", socket.inet_aton(addr.host))[0], socket.htons(addr.port)


def service_key(addr: HostPort) -> ServiceKey:
    ip, port = _wire(addr)
    return ServiceKey(ip, port, 0)


def backend_value(ep: Endpoint) -> BackendValue:
    ip, port = _wire(ep.addr)
    return BackendValue(ip, port, 0)


def service_addrs(spec: ServiceSpec) -> tuple[HostPort, ...]:
    """Every address the Service answers on: ClusterIP:port, node IPs:NodePort, LoadBalancer IP:port."""
    out = [HostPort(spec.cluster_ip, spec.port), *node_port_addrs(spec)]
    if spec.type == "LoadBalancer" and spec.lb_ip is not None:
        out.append(HostPort(spec.lb_ip, spec.port))
    return tuple(out)


def _sysctl(name: str) -> str:
    try:
        return Path("/proc/sys", *name.split(".")).read_text().strip()
    except OSError:
        return "?"


@functools.cache
def _probe_load() -> str | None:
    """Load the object once (no attach): None, or why the kernel refused it."""
    try:
        libbpf.BpfObject(OBJECT.read_bytes(), PROGRAMS).close()
    except OSError as e:
        if isinstance(e, libbpf.BpfError) and e.verifier_line():
            return f"the kernel refused the program: {e.verifier_line()}"
        return f"loading {OBJECT.name} failed: {e}"
    return None


def unavailable_reason() -> str | None:
    if os.geteuid() != 0:
        return (f"needs real root to load BPF (kernel.unprivileged_bpf_disabled="
                f"{_sysctl('kernel.unprivileged_bpf_disabled')})")
    if not real_root():
        return "runs inside a user namespace, where loading BPF is refused (EPERM); run as real root"
    for why in (libbpf.unavailable_reason(), cgroup.unavailable_reason()):
        if why is not None:
            return why
    if not OBJECT.is_file():
        return f"{OBJECT} is missing (rebuild: python -m lbbench.frontends.kernel.bpf.build)"
    return _probe_load()


class SocketLbMaps:
    """The loaded object's maps, in the program's own terms: Services, revisions, backends, stats."""

    def __init__(self, obj: libbpf.BpfObject) -> None:
        self.services = obj.map_fd("services")
        self.backends = obj.map_fd("backends")
        self.stats = obj.map_fd("stats")
        self.settings = obj.map_fd("settings")
        self.cpus = libbpf.possible_cpus()
        self.revision = 0

    def set_reverse(self, on: bool) -> None:
        libbpf.map_update(self.settings, ctypes.c_uint32(SETTING_REVERSE), ctypes.c_uint32(int(on)))

    def write_backends(self, endpoints: Sequence[Endpoint]) -> int:
        """The backends under a fresh revision, in one batched update; returns the revision."""
        self.revision += 1
        if endpoints:
            keys = (BackendKey * len(endpoints))(*(BackendKey(self.revision, i) for i in range(len(endpoints))))
            values = (BackendValue * len(endpoints))(*(backend_value(ep) for ep in endpoints))
            libbpf.map_update_batch(self.backends, keys, values)
        return self.revision

    def switch(self, addrs: Sequence[HostPort], revision: int, count: int) -> None:
        for addr in addrs:
            libbpf.map_update(self.services, service_key(addr), ServiceValue(revision, count))

    def delete_backends(self, revision: int, count: int) -> None:
        if count:
            keys = (BackendKey * count)(*(BackendKey(revision, i) for i in range(count)))
            libbpf.map_delete_batch(self.backends, keys)

    def stats_totals(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for i, name in enumerate(STATS):
            per_cpu = (ctypes.c_uint64 * self.cpus)()
            libbpf.map_lookup(self.stats, ctypes.c_uint32(i), per_cpu)
            out[name] = float(sum(per_cpu))
        return out


class EbpfSocketLb(Frontend):
    """Socket-level random balancing per new connection, for the processes of the run's cgroup."""

    name = "ebpf-socketlb"
    layer = "l4"

    @classmethod
    def unavailable_reason(cls) -> str | None:
        return unavailable_reason()

    def __init__(self, plan: FrontendPlan, supervisor: Supervisor) -> None:
        super().__init__(plan, supervisor)
        self.services = {s.key: s for s in plan.services}
        self.endpoints: dict[str, tuple[Endpoint, ...]] = {s.key: () for s in plan.services}
        self.revisions: dict[str, int] = {}
        self.cgroup: cgroup.RunCgroup | None = None
        self.obj: libbpf.BpfObject | None = None
        self.maps: SocketLbMaps | None = None
        self.links: list[libbpf.Link] = []
        self.syncs = 0
        self.sync_last_s = 0.0
        self.sync_max_s = 0.0

    def _run_name(self) -> str:
        # artifacts go to <results>/frontends/<name>: the results folder names the run
        art = self.plan.artifacts_dir
        return art.parent.parent.name if art is not None and art.parent.name == "frontends" else "run"

    async def start(self) -> None:
        for spec in self.plan.services:
            validate_service(spec)
        if (why := unavailable_reason()) is not None:
            raise UserError(f"{self.name} cannot run here: {why}")
        cgroup.sweep_stale()
        try:
            self.cgroup = cgroup.RunCgroup(self._run_name())
            self.cgroup.create()
            self.obj = libbpf.BpfObject(OBJECT.read_bytes(), PROGRAMS)
            self.maps = SocketLbMaps(self.obj)
            self.maps.set_reverse(self.plan.socket_lb_reverse)
            for spec in self.plan.services:  # every Service refuses until its Endpoints arrive
                self._sync(spec, ())
            attach = PROGRAMS if self.plan.socket_lb_reverse else (CONNECT,)
            self.links = [self.obj.attach_cgroup(p, self.cgroup.fd) for p in attach]
        except BaseException:
            await self.stop()
            raise

    def _sync(self, spec: ServiceSpec, endpoints: tuple[Endpoint, ...]) -> None:
        assert self.maps is not None
        started = time.perf_counter()
        revision = self.maps.write_backends(endpoints)
        self.maps.switch(service_addrs(spec), revision, len(endpoints))
        old = self.revisions.get(spec.key)
        if old is not None:
            self.maps.delete_backends(old, len(self.endpoints[spec.key]))
        self.revisions[spec.key] = revision
        self.endpoints[spec.key] = endpoints
        took = time.perf_counter() - started
        self.syncs += 1
        self.sync_last_s = took
        self.sync_max_s = max(self.sync_max_s, took)

    async def update_endpoints(self, service_key: str, endpoints: tuple[Endpoint, ...]) -> None:
        spec = self.services.get(service_key)
        if spec is None:
            raise ValueError(f"unknown service {service_key!r}")
        if self.maps is None:
            raise RuntimeError(f"{self.name} is not started")
        self._sync(spec, tuple(endpoints))

    async def stop(self) -> None:
        links, self.links = self.links, []
        for link in links:
            link.destroy()
        obj, self.obj, self.maps = self.obj, None, None
        if obj is not None:
            obj.close()
        cg, self.cgroup = self.cgroup, None
        if cg is not None:
            with contextlib.suppress(OSError):
                cg.remove()

    def entrypoint(self, service_key: str, via: ServiceType = "ClusterIP") -> Entrypoint:
        return service_entrypoint(self.services, service_key, via)

    def client_cgroup(self) -> Path | None:
        return self.cgroup.path if self.cgroup is not None else None

    async def counters(self) -> dict[str, float]:
        if self.maps is None:
            return {}
        return {**self.maps.stats_totals(), "bpf_syncs_total": self.syncs,
                "bpf_sync_last_us": self.sync_last_s * 1e6, "bpf_sync_max_us": self.sync_max_s * 1e6}
