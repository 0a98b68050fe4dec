"""The native load client (_engine.c) against HttpClient, keep-alive and close mode: the same scripted servers,
the same schedule, the same per-request status, error, pod, conn_id and new_conn; and the engine's own edge cases.

Real loopback sockets, no mocks. Each client gets a fresh server (so connection numbers match). Each
scenario also states what the outcome must be, so that the two clients agreeing on a wrong answer fails.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Callable

import pytest
from helpers.client_peers import (
    OK,
    Handler,
    Outcome,
    engine_schedule,
    outcomes,
    python_schedule,
    run,
    scripted,
    two_then_close_and_drop_fifth,
)

from lbbench.cluster.standalone import fresh_ip
from lbbench.load.client import Request
from lbbench.model.addresses import HostPort
from lbbench.system.compiled import native_client

pytestmark = pytest.mark.skipif(not native_client(), reason="the native load client is not built here")

def later(tr: asyncio.Transport, delay_s: float, data: bytes, close: bool = False) -> None:
    """Write `data` (and perhaps close) `delay_s` from now: a response split over reads."""
    def go() -> None:
        if not tr.is_closing():
            tr.write(data)
            if close:
                tr.close()

    asyncio.get_running_loop().call_later(delay_s, go)


# -- scenarios: a fresh handler per client, the schedule, the pool, and what must come out ---------------
def ok_always() -> Handler:
    return lambda conn, n, tr: tr.write(OK)


def truncated() -> Handler:
    def h(conn: int, n: int, tr: asyncio.Transport) -> None:
        tr.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly a part")
        tr.close()
    return h


def answer(data: bytes, close: bool = False) -> Callable[[], Handler]:
    def make() -> Handler:
        def h(conn: int, n: int, tr: asyncio.Transport) -> None:
            tr.write(data)
            if close:
                tr.close()
        return h
    return make


def split(*parts: bytes, close: bool = False) -> Callable[[], Handler]:
    """The response in pieces 5 ms apart (each piece its own read)."""
    def make() -> Handler:
        def h(conn: int, n: int, tr: asyncio.Transport) -> None:
            tr.write(parts[0])
            for i, part in enumerate(parts[1:], 1):
                later(tr, 0.005 * i, part, close=close and i == len(parts) - 1)
        return h
    return make


def status_by_turn() -> Handler:
    def h(conn: int, n: int, tr: asyncio.Transport) -> None:
        status = (503, 404, 200, 500, 429)[n % 5]
        tr.write(b"HTTP/1.1 %d X\r\nContent-Length: 0\r\nx-pod: s%d\r\n\r\n" % (status, n))
    return h


def no_body() -> Handler:
    """204 and 304 alternately, each with a Content-Length their status overrides (no body follows)."""
    def h(conn: int, n: int, tr: asyncio.Transport) -> None:
        status = b"204 No Content" if n % 2 == 0 else b"304 Not Modified"
        tr.write(b"HTTP/1.1 " + status + b"\r\nx-pod: nb\r\nContent-Length: 5\r\n\r\n")
    return h


def extra_response() -> Handler:
    """The first answer comes twice (the second 10 ms later, unasked): that connection is out of step."""
    def h(conn: int, n: int, tr: asyncio.Transport) -> None:
        tr.write(OK)
        if conn == 0 and n == 0:
            later(tr, 0.01, OK)
    return h


def first_hangs() -> Handler:
    def h(conn: int, n: int, tr: asyncio.Transport) -> None:
        if conn == 0 and n == 0:
            return  # never answered: a timeout
        tr.write(OK)
    return h


def never_answers() -> Handler:
    return lambda conn, n, tr: None


SPACED = [0.04 * i for i in range(7)]  # one at a time: each answered before the next is due
CHUNKED_HEAD = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nx-pod: chunky\r\n\r\n"
E = ""
SCENARIOS: dict[str, tuple[Callable[[], Handler], list[float], int, dict[str, float], list[Outcome] | None]] = {
    # name: (handler, offsets, pool, client options, expected outcomes (None: only the errors below))
    "many over k": (ok_always, [0.003 * i for i in range(40)], 3, {}, None),
    "broken connections replaced": (two_then_close_and_drop_fifth, SPACED, 1, {}, [
        (200, E, "scripted", 0, True), (200, E, "scripted", 0, False), (200, E, "scripted", 1, True),
        (200, E, "scripted", 1, False), (0, "reset", "", 2, True), (200, E, "scripted", 3, True),
        (200, E, "scripted", 3, False)]),
    "truncated": (truncated, SPACED[:3], 1, {}, [(200, "truncated", "", i, True) for i in range(3)]),
    "garbage": (answer(b"SSH-2.0-OpenSSH\r\n\r\n"), SPACED[:3], 1, {}, [(0, "other", "", i, True) for i in range(3)]),
    "bare LF": (answer(b"HTTP/1.1 200 OK\nContent-Length: 2\n\nok"), SPACED[:2], 1, {},
                [(0, "other", "", i, True) for i in range(2)]),
    "upgrade nobody asked for": (
        answer(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n"),
        SPACED[:2], 1, {}, [(101, "other", "", i, True) for i in range(2)]),
    "body until the end": (answer(b"HTTP/1.1 200 OK\r\nx-pod: old\r\n\r\nthe body runs to the end", close=True),
                           SPACED[:3], 1, {}, [(200, E, "old", i, True) for i in range(3)]),
    "transfer-encoding not chunked, then the end": (
        answer(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nxyz", close=True), SPACED[:2], 1, {},
        [(200, "truncated", "", i, True) for i in range(2)]),
    "chunked with trailers, split": (
        split(CHUNKED_HEAD[:20], CHUNKED_HEAD[20:] + b"5;ext=1\r\nhel", b"lo\r\n1", b"0\r\n" + b"x" * 16 + b"\r\n0\r\n",
              b"Trailer-A: 1\r\n\r\n"), SPACED[:4], 2, {},
        [(200, E, "chunky", 0, True), (200, E, "chunky", 1, True), (200, E, "chunky", 0, False),
         (200, E, "chunky", 1, False)]),
    "content-length split": (split(b"HTTP/1.1 200 OK\r\nx-pod: cl\r\nContent-Le", b"ngth: 10\r\n\r\n01234",
                                   b"56789"), SPACED[:3], 1, {},
                             [(200, E, "cl", 0, True), (200, E, "cl", 0, False), (200, E, "cl", 0, False)]),
    "1xx skipped, same read": (answer(b"HTTP/1.1 100 Continue\r\n\r\n" + OK), SPACED[:2], 1, {},
                               [(200, E, "scripted", 0, True), (200, E, "scripted", 0, False)]),
    "1xx skipped, own read": (split(b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n", OK), SPACED[:2], 1, {},
                              [(200, E, "scripted", 0, True), (200, E, "scripted", 0, False)]),
    # llhttp takes nothing after an interim response without keep-alive: the final one is "other"
    "an HTTP/1.0 interim response ends the connection, same read": (
        answer(b"HTTP/1.0 100 Continue\r\n\r\n" + OK), SPACED[:2], 1, {},
        [(0, "other", "", i, True) for i in range(2)]),
    "an HTTP/1.0 interim response ends the connection, own read": (
        split(b"HTTP/1.0 100 Continue\r\n\r\n", OK), SPACED[:2], 1, {},
        [(0, "other", "", i, True) for i in range(2)]),
    "204 and 304 have no body": (no_body, SPACED[:3], 1, {},
                                 [(204, E, "nb", 0, True), (304, E, "nb", 0, False), (204, E, "nb", 0, False)]),
    "5xx and 4xx": (status_by_turn, SPACED[:5], 1, {}, [
        (503, "http_5xx", "s0", 0, True), (404, "http_4xx", "s1", 0, False), (200, E, "s2", 0, False),
        (500, "http_5xx", "s3", 0, False), (429, "http_4xx", "s4", 0, False)]),
    "connection: close": (answer(OK.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n")), SPACED[:3], 2, {},
                          [(200, E, "scripted", i, True) for i in range(3)]),
    "http/1.0": (answer(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\nx-pod: ten\r\n\r\nok"), SPACED[:3], 1, {},
                 [(200, E, "ten", i, True) for i in range(3)]),
    "http/1.0 keep-alive": (answer(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\nok"),
                            SPACED[:2], 1, {}, [(200, E, "", 0, True), (200, E, "", 0, False)]),
    "bytes nobody asked for": (extra_response, [0.0, 0.08, 0.16], 1, {},
                               [(200, E, "scripted", 0, True), (200, E, "scripted", 1, True),
                                (200, E, "scripted", 1, False)]),
    "timeout drops its connection": (first_hangs, [0.0, 0.3, 0.35], 1, {"timeout_s": 0.2},
                                     [(0, "timeout", "", 0, True), (200, E, "scripted", 1, True),
                                      (200, E, "scripted", 1, False)]),
    "waiting requests time out too": (never_answers, [0.0, 0.05, 0.1, 0.15], 2, {"timeout_s": 0.2}, None),
    # close mode (pool 0): every request its own connection, ended with it, whatever the server says
    "close mode: a connection each, closed by the client": (ok_always, SPACED[:4], 0, {},
                                                           [(200, E, "scripted", i, True) for i in range(4)]),
    "close mode: closed by the server": (answer(OK.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n"),
                                                close=True), SPACED[:3], 0, {},
                                         [(200, E, "scripted", i, True) for i in range(3)]),
    "close mode: overlapping": (ok_always, [0.0005 * i for i in range(30)], 0, {}, None),
    "close mode: truncated": (truncated, SPACED[:3], 0, {}, [(200, "truncated", "", i, True) for i in range(3)]),
    "close mode: body until the end": (answer(b"HTTP/1.1 200 OK\r\nx-pod: old\r\n\r\nto the end", close=True),
                                       SPACED[:2], 0, {}, [(200, E, "old", i, True) for i in range(2)]),
    "close mode: 5xx": (status_by_turn, SPACED[:2], 0, {}, [(503, "http_5xx", "s0", i, True) for i in range(2)]),
    "close mode: a timeout ends only its own": (first_hangs, [0.0, 0.05, 0.3], 0, {"timeout_s": 0.2},
                                                [(0, "timeout", "", 0, True), (200, E, "scripted", 1, True),
                                                 (200, E, "scripted", 2, True)]),
}


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_engine_agrees_with_the_python_client(name: str) -> None:
    make, offsets, pool, kw, expected = SCENARIOS[name]

    async def go() -> tuple[list[Outcome], list[Outcome]]:
        async with scripted(make()) as addr:
            py = await python_schedule(addr, offsets, pool, **kw)
        async with scripted(make()) as addr:
            native, _, _ = await engine_schedule(addr, offsets, pool, **kw)
        return outcomes(py), outcomes(native)

    py, native = run(go())
    assert len(native) == len(offsets)
    assert native == py
    if expected is not None:
        assert native == expected
    elif name == "many over k":
        assert {o[:3] for o in native} == {(200, E, "scripted")}
        assert {o[3] for o in native} == {0, 1, 2} and sum(o[4] for o in native) == 3
    elif name == "close mode: overlapping":  # 0.5 ms apart: many open at once, each its own
        assert [o[:3] for o in native] == [(200, E, "scripted")] * 30 and all(o[4] for o in native)
        assert sorted(o[3] for o in native) == list(range(30))
    else:
        assert {o[1] for o in native} == {"timeout"}


def _free_address() -> HostPort:
    with socket.socket() as s:  # a free port on a fresh IP with nothing listening
        s.bind((fresh_ip(), 0))
        return HostPort(*s.getsockname()[:2])


@pytest.mark.parametrize("pool", [2, 0], ids=["keepalive", "close"])
def test_refused_agrees(pool: int) -> None:
    addr = _free_address()
    offsets = [0.02 * i for i in range(5)]

    async def go() -> tuple[list[Outcome], list[Outcome]]:
        py = await python_schedule(addr, offsets, pool)
        native, _, _ = await engine_schedule(addr, offsets, pool)
        return outcomes(py), outcomes(native)

    py, native = run(go())
    assert native == py == [(0, "refused", "", i, True) for i in range(5)]


@pytest.mark.parametrize("pool", [1, 0], ids=["keepalive", "close"])
def test_connect_timeout_agrees(full_listener: HostPort, pool: int) -> None:
    """The connection never comes up: the first request's connect times out (from the attempt). With the
    pool's one connection, the second waited for the pool and then opens a connection of its own, which
    times out too; in close mode the second's own connect runs side by side with the first's."""
    async def go() -> tuple[list[Request], list[Request]]:
        py = await python_schedule(full_listener, [0.0, 0.05], pool, connect_timeout_s=0.2)
        native, _, _ = await engine_schedule(full_listener, [0.0, 0.05], pool, connect_timeout_s=0.2)
        return py, native

    py, native = run(go())
    expected = [(0, "connect_timeout", "", 0, True), (0, "connect_timeout", "", 1, True)]
    assert outcomes(native) == outcomes(py) == expected
    first, second = sorted(native, key=lambda r: r.intended)
    assert 0.19 <= first.done - first.sent < 0.4 and 0.19 <= second.done - second.sent < 0.4
    if pool:
        assert second.sent >= first.done - 0.01
    else:
        assert second.sent < first.done  # its own attempt, at its own time


# -- the engine's own edge cases ------------------------------------------------------------------------
@pytest.mark.parametrize("waits", ["ns", "ms"])
def test_never_early_and_every_request_ends_once(waits: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """3000 requests in 0.3 s (10k/s, many closer than the poll threshold) over 4 connections; also with
    the fallback for kernels without epoll_pwait2 (millisecond epoll_wait timeouts, rounded up)."""
    if waits == "ms":
        monkeypatch.setenv("LBBENCH_ENGINE_MS_WAITS", "1")
    offsets = sorted((i * 0.0001 + (i % 7) * 1e-6) for i in range(3000))

    async def go() -> list[Request]:
        async with scripted(ok_always()) as addr:
            return (await engine_schedule(addr, offsets, 4))[0]

    reqs = run(go())
    assert len(reqs) == 3000 and {r.error for r in reqs} == {E}
    assert all(r.issued >= r.intended for r in reqs)  # never early
    assert all(r.intended <= r.issued <= r.sent <= r.done for r in reqs)
    assert sorted(r.conn_id for r in reqs if r.new_conn) == [0, 1, 2, 3]
    assert {r.conn_id for r in reqs} == {0, 1, 2, 3}


def test_a_request_waiting_for_a_busy_connection_knows_when_its_answer_arrived() -> None:
    """One connection, answers 30 ms late: the second request waits for the first's answer. Its `freed`
    is the kernel's receive stamp of that answer, on the monotonic clock: after the first was sent and
    the server's 30 ms, before the engine finished reading it. So the wait before `freed` was the
    target's and only the rest the client's."""
    def late_answers() -> Handler:
        return lambda conn, n, tr: later(tr, 0.03, OK)

    async def go() -> list[Request]:
        async with scripted(late_answers()) as addr:
            return (await engine_schedule(addr, [0.0, 0.001, 0.002], 1))[0]

    first, second, third = sorted(run(go()), key=lambda r: r.intended)
    assert [r.error for r in (first, second, third)] == [E] * 3
    assert first.freed != first.freed  # NaN: it opened the connection, it waited for none
    for before, r in ((first, second), (second, third)):
        # (the scripted server's loop keeps its timers to the millisecond: 30 ms can be 29.x)
        assert before.sent + 0.025 <= r.freed <= before.done <= r.sent, (before.sent, r.freed, before.done, r.sent)
        assert r.issued < r.freed  # it was waiting when the answer arrived


def test_each_request_times_out_from_its_own_intended_time() -> None:
    """Intended times in the past are issued at once and still time out from their intended time."""
    offsets = [-0.2, -0.1, 0.0, 0.05, 0.1]

    async def go() -> list[Request]:
        async with scripted(never_answers()) as addr:
            return (await engine_schedule(addr, offsets, 5, timeout_s=0.3))[0]

    reqs = run(go())
    assert [r.error for r in reqs] == ["timeout"] * 5
    assert all(0.299 <= r.done - r.intended < 0.45 for r in reqs), [r.done - r.intended for r in reqs]


def _threads() -> int:
    return len(os.listdir("/proc/self/task"))


def test_stop_sending_mid_run_lets_the_issued_ones_finish() -> None:
    offsets = [0.005 * i for i in range(200)]  # 1 s
    before = _threads()

    async def go() -> tuple[list[Request], int]:
        async with scripted(ok_always()) as addr:
            reqs, _, issued = await engine_schedule(addr, offsets, 2, stop_after_s=0.3)
            return reqs, issued

    reqs, issued = run(go())
    assert 40 <= issued <= 100 and len(reqs) == issued
    intended = [r.intended for r in reqs]
    assert {r.error for r in reqs} == {E} and max(intended) - min(intended) < 0.5  # none after the stop
    assert _threads() == before  # the engine's thread has ended


def test_abort_drops_the_outstanding_ones_and_ends_the_thread() -> None:
    before = _threads()

    async def go() -> tuple[list[Request], int]:
        async with scripted(never_answers()) as addr:
            reqs, dropped, _ = await engine_schedule(addr, [0.0, 0.01, 0.02, 0.03, 0.04], 2, abort_after_s=0.2)
            return reqs, dropped

    reqs, dropped = run(go())
    assert dropped == 5 and [r.error for r in reqs] == ["aborted"] * 5
    assert all(r.done != r.done for r in reqs)  # never done: NaN
    assert _threads() == before


def test_close_while_running_ends_the_thread() -> None:
    import numpy as np

    from lbbench.load import _engine

    addr = _free_address()
    before = _threads()
    eng = _engine.Engine(addr.host, addr.port, b"GET / HTTP/1.1\r\n\r\n", 1, 1.0, 10.0, 0, 1)
    eng.start_open(np.arange(100, dtype=np.float64) + time.monotonic() + 60)  # due in a minute
    assert eng.running and _threads() == before + 1
    eng.close()
    assert eng.closed and not eng.running and _threads() == before
    eng.close()  # idempotent
    with pytest.raises(ValueError, match="closed"):
        eng.start_open(np.zeros(1))


@pytest.mark.parametrize("think_s", [0.0, 0.01])
def test_closed_loop_users_send_wait_think_and_send_again(think_s: float) -> None:
    """5 users over 3 connections for 0.3 s: each user's next request is intended `think_s` after its
    previous answer (never before it, never early), and none is intended after the end."""
    import numpy as np

    from lbbench.load import _engine
    from lbbench.load.native import RECORD

    async def go() -> tuple[np.ndarray, float, int]:
        async with scripted(ok_always()) as addr:
            eng = _engine.Engine(addr.host, addr.port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", 3, 1.0, 2.0, 0, 1)
            t0 = time.monotonic() + 0.01
            eng.start_closed(np.array([t0 + 0.001 * u for u in range(5)]), t0 + 0.3, think_s)
            chunks, issued = [], 0
            try:
                for _ in range(400):
                    await asyncio.sleep(0.01)
                    data, issued, outstanding, sending_done, _, _ = eng.drain()
                    chunks.append(data)
                    if sending_done and outstanding == 0:
                        break
            finally:
                eng.close()
        return np.frombuffer(b"".join(chunks), dtype=RECORD), t0, issued

    recs, t0, issued = run(go())
    assert len(recs) == issued > 5 * 10 and set(recs["error"].tolist()) == {0}
    assert set(recs["conn_id"].tolist()) == {0, 1, 2} and recs["intended"].max() < t0 + 0.3
    assert (recs["issued"] >= recs["intended"]).all()
    for user in range(5):
        mine = np.sort(recs[recs["tag"] == user], order="intended")
        assert len(mine) > 10
        assert (mine["intended"][1:] >= mine["done"][:-1] + think_s - 1e-9).all()  # one at a time, then think


def test_polling_for_the_next_send_is_counted_apart() -> None:
    """At 20k req/s most gaps are under the 50 us poll threshold: the engine reports the CPU time it
    spent only polling (the worker reports it and leaves it out of its busy fraction), never more than it used."""
    import resource

    import numpy as np

    from lbbench.load import _engine

    async def go() -> tuple[float, float]:
        async with scripted(ok_always()) as addr:
            eng = _engine.Engine(addr.host, addr.port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", 4, 1.0, 2.0, 0, 1)
            ru0 = resource.getrusage(resource.RUSAGE_SELF)
            eng.start_open(np.arange(10000, dtype=np.float64) * 5e-5 + time.monotonic() + 0.01)
            try:
                for _ in range(300):
                    await asyncio.sleep(0.01)
                    _, _, outstanding, sending_done, _, _ = eng.drain()
                    if sending_done and outstanding == 0:
                        break
                polling = eng.polling_seconds()
            finally:
                eng.close()
            ru1 = resource.getrusage(resource.RUSAGE_SELF)
            return polling, (ru1.ru_utime + ru1.ru_stime) - (ru0.ru_utime + ru0.ru_stime)

    polling, cpu = run(go())
    assert 0.02 < polling < cpu, (polling, cpu)


def _epoll_fds() -> set[int]:
    fds = set()
    for name in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{name}") == "anon_inode:[eventpoll]":
                fds.add(int(name))
        except OSError:
            pass  # the listing's own fd, gone already
    return fds


def test_an_engine_that_fails_keeps_what_it_recorded_and_cuts_the_run_short() -> None:
    """The engine's epoll fd closed under it (its wait then fails with EBADF): the requests it finished
    reach the recorder, the driver reports the failure and stops, waiting for it ends, and the requests
    in flight are counted as aborted (the worker then marks the run stopped, with a warning)."""
    import numpy as np

    from lbbench.load.native import make_driver
    from lbbench.load.recorder import Recorder

    async def go() -> tuple[str | None, int, int, int]:
        async with scripted(ok_always()) as addr:
            before = _epoll_fds()
            t0 = time.monotonic() + 0.05
            times = t0 + np.arange(2000) * 1e-3  # 2 s at 1k req/s
            rec = Recorder(t0, record_rows=True)
            driver = make_driver((addr.host, addr.port), b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", 4, 1.0, 10.0, 0, 1,
                                 times, rec)
            [engine_ep] = _epoll_fds() - before
            driver.start()
            await asyncio.sleep(0.4)
            os.close(engine_ep)
            await asyncio.wait_for(driver.finished, 5.0)
            await asyncio.wait_for(driver.wait_idle(), 5.0)
            aborted = driver.abort_all()
            driver.close()
            return driver.failure, rec.done, rec.issued, aborted

    failure, done, issued, aborted = run(go())
    assert failure is not None and "Bad file descriptor" in failure
    assert 200 <= done < 2000 and issued < 2000  # kept what it had, and stopped sending
    assert done + aborted == issued  # every request it issued: recorded, or counted as aborted
