"""One request's trip through the proxy: plain state shared by the client side, the queue and the upstream.

An Exchange is created when a request line starts arriving and ends when its response has
been handed to the client (or an error was). The request bytes for the backend are kept in
`out` until written; while the whole request fits in the retry buffer it is kept after writing
too (`replayable`), so that an attempt that fails before any response byte can be replayed on
another backend.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, cast

from lbbench.system.compiled import proxy_heads

if TYPE_CHECKING:
    from lbbench.frontends.proxy.backend import Backend
    from lbbench.frontends.proxy.client import ClientConnection
    from lbbench.frontends.proxy.queue import ServicePool
    from lbbench.frontends.proxy.upstream import UpstreamConnection

# Life of an exchange.
PARSING = 0  # request head still arriving
WAITING = 1  # head complete, behind an earlier request on the same client connection (pipelining)
QUEUED = 2  # in its Service's central FIFO queue
CONNECTING = 3  # a backend was chosen; waiting for a connection to it
ACTIVE = 4  # attached to an upstream connection
DONE = 5  # response complete, or an error response was generated
CANCELLED = 6  # the client went away

RETRY_BUFFER = 64 * 1024  # request bytes kept for a replay; also the buffer before a backend is chosen


class Exchange:
    __slots__ = (
        "attempts", "backend", "body_bytes", "client", "dispatched_at", "expect_continue", "framing", "head_sent",
        "idempotent", "is_head", "keep_alive", "method", "out", "out_bytes", "out_framing", "out_written", "pool",
        "queue_timer", "queue_wait_s", "queued_at", "reject", "replayable", "request_done", "state", "status",
        "target", "tried", "upstream", "version11",
    )

    def __init__(self, client: ClientConnection) -> None:
        self.client = client
        self.state = PARSING
        self.method = "GET"
        self.target = b"/"
        self.version11 = True
        self.keep_alive = True
        self.framing = 0
        self.is_head = False
        self.idempotent = True
        self.expect_continue = False
        self.reject: tuple[int, str] | None = None  # error response owed instead of forwarding
        self.pool: ServicePool | None = None
        self.out: list[bytes] = []
        self.out_bytes = 0
        self.out_written = 0  # pieces of `out` already written to the current upstream
        self.replayable = True
        self.request_done = False
        self.body_bytes = 0
        self.backend: Backend | None = None
        self.upstream: UpstreamConnection | None = None
        self.attempts = 1
        self.tried: tuple[Backend, ...] = ()  # backends that failed this request (a retry avoids them)
        self.queued_at = 0.0
        self.queue_wait_s = 0.0
        self.queue_timer: asyncio.TimerHandle | None = None
        self.dispatched_at = 0.0
        self.head_sent = False
        self.out_framing = 0
        self.status = 0


def _maker() -> Callable[[ClientConnection], Exchange]:
    """What makes the proxy's Exchanges: the C twin of the class above (lbbench/frontends/proxy/_exchange.h:
    the same slots, defaults and constructor, made in ~50 ns instead of ~250, once per request) where the
    _heads module is built and not turned off; the class itself otherwise, and in the mypyc build
    (LBBENCH_COMPILE=1), whose compiled callers require the class itself."""
    heads = proxy_heads()
    if heads is None or not __file__.endswith(".py"):
        return Exchange
    return cast("Callable[[ClientConnection], Exchange]", heads.Exchange)


new_exchange = _maker()
