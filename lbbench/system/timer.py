"""A microsecond-precise timer for any asyncio loop, built on Linux timerfd.

uvloop's timers have millisecond granularity (they wake up to 0.5 ms early or late), which
would bias a 10 ms exponential service time by ~2% and blur the generator's send times.
One timerfd per loop, armed at the earliest deadline (CLOCK_MONOTONIC, absolute, ns), fires
everything that is due. Deadlines use `time.monotonic()`, the same clock in every process.

The timerfd is re-armed only when the earliest deadline moves: not for a later deadline,
not again for the one it is armed at, and once per wake-up however many callbacks add new
deadlines while it fires (a profile of the load generator had ~15% of its samples here).
That re-arm also clears the expiry, so a wake-up reads the timerfd only when nothing is left.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import heapq
import itertools
import os
import time
from collections.abc import Callable

_CLOCK_MONOTONIC = 1
_TFD_NONBLOCK = 0o4000
_TFD_CLOEXEC = 0o2000000
_TFD_TIMER_ABSTIME = 1


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _Itimerspec(ctypes.Structure):
    _fields_ = [("it_interval", _Timespec), ("it_value", _Timespec)]


_libc = ctypes.CDLL(None, use_errno=True)
# Declared argument types and a preallocated struct passed by address: a third of the cost
# of building the structs and converting the arguments on every call.
_settime = _libc.timerfd_settime
_settime.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]
_settime.restype = ctypes.c_int


class TimerHandle:
    __slots__ = ("callback", "cancelled", "when")

    def __init__(self, when: float, callback: Callable[[], None]) -> None:
        self.when = when
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class PreciseTimer:
    """call_at / sleep_until with ns-resolution deadlines on `time.monotonic()`."""

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._loop = loop or asyncio.get_running_loop()
        fd = _libc.timerfd_create(_CLOCK_MONOTONIC, _TFD_NONBLOCK | _TFD_CLOEXEC)
        if fd < 0:
            raise OSError(ctypes.get_errno(), "timerfd_create failed")
        self._fd: int = fd
        self._heap: list[tuple[float, int, TimerHandle]] = []
        self._seq = itertools.count()
        self._armed_at: float | None = None  # the deadline the timerfd will fire for, if armed
        self._firing = False  # inside _fire: it arms once at its end
        self._spec = _Itimerspec()
        self._value = self._spec.it_value  # a view into _spec's memory
        self._spec_addr = ctypes.addressof(self._spec)
        # Wake-up latency (syscall + scheduler, ~0.1 ms on a VM) learned as an EWMA and
        # armed ahead of time, so that callbacks run on the deadline on average.
        self.lead_s = 0.0
        self._loop.add_reader(self._fd, self._fire)

    def call_at(self, when: float, callback: Callable[[], None]) -> TimerHandle:
        handle = TimerHandle(when, callback)
        heapq.heappush(self._heap, (when, next(self._seq), handle))
        if not self._firing and (self._armed_at is None or when < self._armed_at):
            self._arm(when)
        return handle

    def sleep_until(self, when: float) -> asyncio.Future[None]:
        fut: asyncio.Future[None] = self._loop.create_future()

        def wake() -> None:
            if not fut.done():
                fut.set_result(None)

        if when <= time.monotonic():
            wake()
        else:
            self.call_at(when, wake)
        return fut

    def sleep(self, delay_s: float) -> asyncio.Future[None]:
        return self.sleep_until(time.monotonic() + delay_s)

    def close(self) -> None:
        self._loop.remove_reader(self._fd)
        os.close(self._fd)
        self._heap.clear()

    def _arm(self, when: float) -> None:
        self._armed_at = when
        ns = int((when - self.lead_s) * 1e9)
        value = self._value
        value.tv_sec, value.tv_nsec = divmod(ns if ns > 0 else 1, 1_000_000_000)  # 0 would disarm it
        if _settime(self._fd, _TFD_TIMER_ABSTIME, self._spec_addr, None) != 0:
            raise OSError(ctypes.get_errno(), "timerfd_settime failed")

    def _fire(self) -> None:
        armed = self._armed_at
        now = time.monotonic()
        if armed is not None and now < armed - self.lead_s:
            return  # a stale readiness (re-armed since): not expired, and still armed
        self._armed_at = None
        if armed is not None:
            late = now - armed
            self.lead_s = min(max(self.lead_s + 0.05 * late, 0.0), 3e-4)
        heap = self._heap
        due = now + self.lead_s
        self._firing = True
        try:
            while heap and heap[0][0] <= due:
                handle = heapq.heappop(heap)[2]
                if not handle.cancelled:
                    handle.callback()
            while heap and heap[0][2].cancelled:
                heapq.heappop(heap)
        finally:
            self._firing = False
            if heap:
                self._arm(heap[0][0])  # setting the timer also clears its expiry count
            else:
                with contextlib.suppress(BlockingIOError):
                    os.read(self._fd, 8)  # clear it, or the loop would call us again at once
