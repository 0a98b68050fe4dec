"""Apache httpd (Debian's ``apache2``) with mod_proxy_balancer as a reference Ingress.

Runs ``apache2 -DFOREGROUND -f httpd.conf`` with its own ServerRoot, PidFile, Mutex and
DefaultRuntimeDir in a private directory, loading modules from /usr/lib/apache2/modules
(never the system's /etc/apache2). An Endpoints update rewrites the config and does a
graceful restart (SIGUSR1 to the parent, what ``apachectl -k graceful`` sends; the
separate config test of ``apachectl graceful`` is not timed, the config was checked at
start and only endpoints change); done when the new generation answers the status
virtual host. Old children finish their requests. Measured here (2.4 event MPM): a graceful
restart usually stalls *new* connections for ~1 s (the new child waits a one-second
scoreboard tick before it accepts; Debian's default MPM numbers do the same), so
``reload_s`` is ~1 s and requests arriving meanwhile wait rather than fail.

ProxySettings -> httpd (event MPM, mod_proxy_http, mod_proxy_balancer, mod_proxy_hcheck):
  maxconn            ``max=`` on each BalancerMember: the size of its connection pool per
                     child process. One active child (ThreadsPerChild = MaxRequestWorkers =
                     128) makes it a per-pod limit; more than 128 concurrent requests wait
                     in the listen backlog.
  queue_timeout_s    ``acquire=`` (ms): a request waits that long for a free connection of
                     the chosen member, then gets 503. The queue is per pod (its pool), not
                     central: the balancer picks the member first and waits on it after.
  max_queue          no equivalent.
  balance            round-robin: ``lbmethod=byrequests``; least-conn, p2c, peak-ewma:
                     ``bybusyness`` (the closest: fewest requests in flight); random: no
                     random method exists, ``byrequests`` is used.
  retries            ``maxattempts=`` on the balancer (failover to another member).
  retry_idempotent   no switch: mod_proxy_http retries on its own only when a reused
                     keep-alive connection was closed before the request was sent.
  eject_after        no count: a member goes into error state on its first connect
                     failure and is retried after ``retry=`` = one check interval (>= 1 s).
  health             ``hcmethod=GET hcuri=<path> hcinterval hcfails hcpasses``.
  timeouts           ``connectiontimeout=``, ``timeout=`` on members; ``Timeout`` and
                     ``KeepAliveTimeout`` for clients.
Keep-alive on both sides (``MaxKeepAliveRequests 0``: unlimited; backend connections are
reused by default); Host passed through (``ProxyPreserveHost On``), X-Forwarded-For added
by mod_proxy. A Service with no endpoints keeps one disabled placeholder member
(``status=+D``), so requests get 503 at once ("all workers are in error state").

As root, children run as ``nobody``. Inside an unprivileged user namespace (lbbench's
private netns: only uid 0 mapped) no switch is possible; the children log AH02155 once and
keep the namespace's uid 0, which is the invoking user outside it. mod_slotmem_shm names
its segments after files in the private directory but creates them in /dev/shm; a clean
stop removes them, a SIGKILL (lbbench itself killed) may leave a few small ones behind.
"""

from __future__ import annotations

import math
import signal
from pathlib import Path
from typing import ClassVar, Literal

from lbbench.frontends.reference.common import (
    STATUS_HOST,
    STATUS_PATH,
    ReferenceFrontend,
    Route,
    binary_path,
    eject_s,
    hosts_in_order,
    missing_binary_reason,
    ms,
    probe_generation,
    routes,
    safe_name,
)
from lbbench.model.addresses import HostPort
from lbbench.system.scratch import Kind
from lbbench.system.users import unprivileged_identity

MODULES_DIR = Path("/usr/lib/apache2/modules")
_MODULES = (
    ("mpm_event_module", "mod_mpm_event.so"),
    ("authz_core_module", "mod_authz_core.so"),
    ("proxy_module", "mod_proxy.so"),
    ("proxy_http_module", "mod_proxy_http.so"),
    ("proxy_balancer_module", "mod_proxy_balancer.so"),
    ("slotmem_shm_module", "mod_slotmem_shm.so"),
    ("lbmethod_byrequests_module", "mod_lbmethod_byrequests.so"),
    ("lbmethod_bybusyness_module", "mod_lbmethod_bybusyness.so"),
    ("proxy_hcheck_module", "mod_proxy_hcheck.so"),
)
_LBMETHOD = {"round-robin": "byrequests", "random": "byrequests", "least-conn": "bybusyness", "p2c": "bybusyness",
             "peak-ewma": "bybusyness"}
THREADS = 128


class Httpd(ReferenceFrontend):
    name: ClassVar[str] = "httpd"
    layer: ClassVar[Literal["l4", "l7"]] = "l7"
    binary: ClassVar[str] = "apache2"
    scratch: ClassVar[Kind] = "httpd"
    workers_switch_user: ClassVar[bool] = True
    package: ClassVar[str] = "apache2"
    config_name: ClassVar[str] = "httpd.conf"
    fatal_marker: ClassVar[bytes] = b"AH00016"  # "Configuration Failed"

    @classmethod
    def unavailable_reason(cls) -> str | None:
        if (why := missing_binary_reason(cls.binary, cls.package)) is not None:
            return why
        missing = [so for _, so in _MODULES if not (MODULES_DIR / so).exists()]
        if missing:
            return f"apache2 modules missing from {MODULES_DIR}: {', '.join(missing)} (apt-get install apache2)"
        return None

    def prepare_workdir(self, workdir: Path) -> None:
        (workdir / "run").mkdir()
        (workdir / "empty").mkdir()

    def run_argv(self, config: Path) -> list[str]:
        return [binary_path(self.binary), "-DFOREGROUND", "-f", str(config)]

    def check_argv(self, config: Path) -> list[str]:
        return [binary_path(self.binary), "-t", "-f", str(config)]

    def reload_signal(self) -> int:
        return signal.SIGUSR1

    async def serving_generation(self) -> int | None:
        return await probe_generation(HostPort(self.plan.ingress_ip, self.plan.ingress_port))

    def render(self) -> str:
        assert self.workdir is not None
        lines = [f"# lbbench httpd, generation {self.generation}: rendered from the run's plan",
                 *self._server_settings()]
        for s in self.plan.services:
            lines += self._balancer(s.key)
        rs = routes(self.plan)
        # The first virtual host of an address is the default for unknown Host headers.
        lines += self._vhost(None, [r for r in rs if r.host is None])
        for host in hosts_in_order(rs):
            if host is not None:
                lines += self._vhost(host, [r for r in rs if r.host == host])
        lines += self._status_vhost()
        return "\n".join(lines) + "\n"

    def _server_settings(self) -> list[str]:
        assert self.workdir is not None
        wd = self.workdir
        c = math.ceil(self.plan.proxy.client_timeout_s)
        lines = [
            f'ServerRoot "{wd}"',
            "ServerName lbbench-httpd",
            f'PidFile "{wd}/httpd.pid"',
            f'DefaultRuntimeDir "{wd}/run"',
            "Mutex pthread default",
            "ErrorLog /dev/stderr",
            "LogLevel warn",
        ]
        if (ident := unprivileged_identity()) is not None:
            lines += [f"User {ident[0]}", f"Group {ident[1]}"]
        lines += [f"LoadModule {mod} {MODULES_DIR / so}" for mod, so in _MODULES]
        lines += [
            f"Listen {self.plan.ingress_ip}:{self.plan.ingress_port}",
            f"Timeout {c}",
            "KeepAlive On",
            "MaxKeepAliveRequests 0",
            f"KeepAliveTimeout {c}",
            "StartServers 1",
            "ServerLimit 4",  # room for children finishing gracefully after a restart
            f"ThreadLimit {THREADS}",
            f"ThreadsPerChild {THREADS}",
            f"MaxRequestWorkers {THREADS}",
            "MinSpareThreads 16",
            f"MaxSpareThreads {2 * THREADS}",
            "MaxConnectionsPerChild 0",
            "",
        ]
        return lines

    def _balancer(self, key: str) -> list[str]:
        p = self.plan.proxy
        h = p.health
        lines = [f'<Proxy "balancer://{safe_name(key)}">']
        eps = self.endpoints[key]
        if not eps:
            lines.append(f'    BalancerMember "http://127.0.0.1:{self.service(key).target_port}" status=+D')
        opts = (f"acquire={ms(p.queue_timeout_s)} retry={math.ceil(eject_s(self.plan))} "
                f"connectiontimeout={ms(p.connect_timeout_s)}ms timeout={math.ceil(p.server_timeout_s)} "
                f"hcmethod=GET hcuri={h.path} hcinterval={ms(h.interval_s)}ms hcfails={h.fall} hcpasses={h.rise}")
        if p.maxconn > 0:
            opts = f"max={p.maxconn} {opts}"
        lines += [f'    BalancerMember "http://{e.ip}:{e.port}" {opts}' for e in eps]
        lines += [f"    ProxySet lbmethod={_LBMETHOD[p.balance]} maxattempts={p.retries}", "</Proxy>", ""]
        return lines

    def _vhost(self, host: str | None, rs: list[Route]) -> list[str]:
        assert self.workdir is not None
        lines = [
            f"<VirtualHost {self.plan.ingress_ip}:{self.plan.ingress_port}>",
            f"    ServerName {host or 'lbbench-default.invalid'}",
            f'    DocumentRoot "{self.workdir / "empty"}"',
            "    ProxyPreserveHost On",
        ]
        seen: set[str] = set()
        for r in sorted(rs, key=lambda r: -len(r.path)):  # first matching ProxyPass wins
            if r.path not in seen:
                seen.add(r.path)
                lines.append(f'    ProxyPass "{r.path}" "balancer://{safe_name(r.service)}{r.path}"')
        return [*lines, "</VirtualHost>", ""]

    def _status_vhost(self) -> list[str]:
        assert self.workdir is not None
        return [
            f"<VirtualHost {self.plan.ingress_ip}:{self.plan.ingress_port}>",
            f"    ServerName {STATUS_HOST}",
            f'    DocumentRoot "{self.workdir / "empty"}"',
            f'    ErrorDocument 404 "lbbench-generation {self.generation} ({STATUS_PATH})"',
            "</VirtualHost>",
        ]
