"""lbbench's cluster DNS on a thread of its own, for tests that drive processes synchronously."""

from __future__ import annotations

import asyncio
import threading
from types import TracebackType

from lbbench.cluster.dns import ClusterDns
from lbbench.cluster.standalone import fresh_ip
from lbbench.model.addresses import HostPort


class DnsThread:
    """`with DnsThread() as dns:` a real UDP ClusterDns on a fresh loopback IP; `dns.set(name, ips)`."""

    def __init__(self) -> None:
        self.server = ClusterDns()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="cluster-dns", daemon=True)
        self.addr = HostPort("127.0.0.1", 0)

    def __enter__(self) -> DnsThread:
        self.thread.start()
        self.addr = asyncio.run_coroutine_threadsafe(self.server.start(HostPort(fresh_ip(), 0)), self.loop).result(10)
        return self

    def set(self, name: str, ips: tuple[str, ...], ttl_s: int = 0) -> None:
        """Replace `name`'s A records (none: NXDOMAIN), on the server's own loop."""
        done = threading.Event()

        def apply() -> None:
            self.server.set_records(name, ips, ttl_s)
            done.set()

        self.loop.call_soon_threadsafe(apply)
        done.wait(10)

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        asyncio.run_coroutine_threadsafe(self.server.stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()
