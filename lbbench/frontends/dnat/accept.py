"""userspace-dnat's workers on one shared listening socket: the relay's counters, shared.

The accepting itself (least loaded worker first) is lbbench.system.sharedaccept; here the
relay's `active` count is kept in the workers' shared array, so the acceptor sees it.
"""

from __future__ import annotations

from lbbench.frontends.dnat.relay import Counters
from lbbench.system.sharedaccept import Loads


class SharedCounters(Counters):
    """The relay's counters, with `active` kept in the shared array (written per connection)."""

    __slots__ = ("loads",)

    def __init__(self, loads: Loads) -> None:
        self.loads = loads
        super().__init__()

    @property
    def active(self) -> int:
        return self.loads.mine

    @active.setter
    def active(self, value: int) -> None:
        self.loads.mine = value
