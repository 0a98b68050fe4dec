"""The control pipe between lbbench and its own children: one JSON object per line, both ways.

The parent writes requests to a child's stdin (endpoint updates, fault changes). EOF on
stdin means the parent is gone: the child exits at once. This doubles as the watchdog pipe
of the no-orphans rule.

A child that answers writes JSON lines to its stdout: first one announcement (ready, or why
it failed to start), then one reply per request that carried an ``id``: the request's
result fields, or ``{"id": n, "error": reason}``; in between, notices of its own (lines
without an ``id``, e.g. a proxy's backend marked down). :class:`ChildChannel` is the parent's
end: it waits for the announcement, matches replies to requests, and hands notices on.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import stat
import sys
from collections.abc import Awaitable, Callable
from typing import IO, Any

from lbbench.system.procs import Child

Message = dict[str, Any]


class JsonLines:
    """Splits a byte stream into JSON objects, one per line (blank, malformed and non-object lines are skipped)."""

    def __init__(self) -> None:
        self.buf = bytearray()

    def feed(self, data: bytes) -> list[Message]:
        self.buf += data
        out: list[Message] = []
        while (nl := self.buf.find(b"\n")) >= 0:
            line = bytes(self.buf[:nl])
            del self.buf[: nl + 1]
            if not line.strip():
                continue
            with contextlib.suppress(ValueError):
                msg = json.loads(line)
                if isinstance(msg, dict):
                    out.append(msg)
        return out


def encode(message: Message) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode() + b"\n"


# -- the child's end -------------------------------------------------------------------------


def attach_stdin_control(loop: asyncio.AbstractEventLoop, on_message: Callable[[Message], None]) -> bool:
    """Read JSON lines from stdin and call `on_message` for each; exit on EOF.

    Only when stdin is a pipe or socket (as lbbench's supervisor gives it); run by hand from
    a terminal or with </dev/null, the process has no parent to watch. Returns whether attached.
    """
    try:
        fd = sys.stdin.fileno()
        mode = os.fstat(fd).st_mode
    except (OSError, ValueError, AttributeError):
        return False
    if not (stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)):
        return False
    lines = JsonLines()

    def readable() -> None:
        try:
            data = os.read(fd, 65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            os._exit(0)
        for msg in lines.feed(data):
            on_message(msg)

    os.set_blocking(fd, False)
    loop.add_reader(fd, readable)
    return True


def attach_requests(loop: asyncio.AbstractEventLoop, handle: Callable[[Message], Awaitable[Message]]) -> bool:
    """Answer every request on stdin with ``{"id": n, **handle(request)}`` on stdout.

    A request `handle` cannot apply is answered ``{"id": n, "error": reason}``: the parent waits
    for a reply to each one, so a failure must be said, never swallowed. Requests are started
    in arrival order.
    """
    tasks: set[asyncio.Task[None]] = set()

    async def answer(msg: Message) -> None:
        out: Message = {"id": msg.get("id")}
        try:
            out.update(await handle(msg))
        except Exception as e:
            out["error"] = str(e) or type(e).__name__
        reply(out)

    def on_message(msg: Message) -> None:
        task = loop.create_task(answer(msg))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    return attach_stdin_control(loop, on_message)


def reply(message: Message) -> bool:
    """Child side: one message to the parent (the announcement, or a reply) on stdout.

    False if nobody reads any more (a parent that took only the ready line, or a closed
    terminal): answering is a courtesy, never a reason for the child to fail.
    """
    try:
        sys.stdout.buffer.write(encode(message))
        sys.stdout.buffer.flush()
    except (BrokenPipeError, ValueError, OSError):
        return False
    return True


class Notices:
    """A child's notices, held back until its announcement is out: the parent takes the first line for that."""

    def __init__(self) -> None:
        self._held: list[Message] | None = []

    def send(self, message: Message) -> None:
        if self._held is None:
            reply(message)
        else:
            self._held.append(message)

    def announce(self, message: Message) -> None:
        reply(message)
        held, self._held = self._held or [], None
        for m in held:
            reply(m)


# -- the parent's end ------------------------------------------------------------------------


def send(stdin: IO[bytes] | None, message: Message) -> bool:
    """Parent side: write one message; False if the child is gone."""
    if stdin is None:
        return False
    try:
        stdin.write(encode(message))
        stdin.flush()
    except (BrokenPipeError, ValueError, OSError):
        return False
    return True


class ChildGone(RuntimeError):
    """The child exited (or closed its stdout) before answering."""


class ChildChannel(asyncio.Protocol):
    """The parent's end of a child's control pipe: its announcement, then request -> reply by id."""

    def __init__(self, child: Child, name: str) -> None:
        self.child = child
        self.name = name
        self.lines = JsonLines()
        self.announced: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self.waiting: dict[int, asyncio.Future[Message]] = {}
        self.closed = False
        self._next_id = 0
        self._transport: asyncio.BaseTransport | None = None
        self.on_notice: Callable[[Message], None] | None = None  # messages after the announcement without an id

    @classmethod
    async def open(cls, child: Child, name: str) -> ChildChannel:
        """Read `child`'s stdout (spawned with stdout=PIPE) from now on."""
        stdout = child.popen.stdout
        assert stdout is not None, "spawn the child with stdout=subprocess.PIPE"
        # Own a dup of the pipe: the transport closes its file, the Popen keeps its own.
        pipe = os.fdopen(os.dup(stdout.fileno()), "rb", buffering=0)
        stdout.close()
        channel = cls(child, name)
        channel._transport, _ = await asyncio.get_running_loop().connect_read_pipe(lambda: channel, pipe)
        return channel

    async def announcement(self, timeout_s: float) -> Message:
        """The child's first message (ready, or why it failed); ChildGone if it exits first."""
        try:
            return await asyncio.wait_for(asyncio.shield(self.announced), timeout_s)
        except TimeoutError:
            raise TimeoutError(f"{self.name} did not become ready within {timeout_s:g} s") from None

    async def request(self, message: Message, timeout_s: float = 5.0) -> Message:
        """Send `message` and return the child's reply; ValueError with its reason if it refused."""
        if self.closed or not self.child.alive():
            raise ChildGone(f"{self.name} is not running")
        self._next_id += 1
        key = self._next_id
        fut: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self.waiting[key] = fut
        if not send(self.child.stdin, {"id": key, **message}):
            self.waiting.pop(key, None)
            raise ChildGone(f"{self.name} is gone")
        try:
            # asyncio.timeout, not wait_for: 3.11's wait_for drops a cancellation that races the reply
            async with asyncio.timeout(timeout_s):
                answer = await fut
        finally:
            self.waiting.pop(key, None)
        if "error" in answer:
            raise ValueError(f"{self.name}: {answer['error']}")
        return answer

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None

    # asyncio.Protocol

    def data_received(self, data: bytes) -> None:
        for msg in self.lines.feed(data):
            fut = self.waiting.pop(msg["id"], None) if isinstance(msg.get("id"), int) else None
            if fut is not None:
                if not fut.done():
                    fut.set_result(msg)
            elif not self.announced.done():
                self.announced.set_result(msg)
            elif self.on_notice is not None and "id" not in msg:
                self.on_notice(msg)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        gone = ChildGone(f"{self.name} exited")
        for fut in [self.announced, *self.waiting.values()]:
            if not fut.done():
                fut.set_exception(gone)
                fut.exception()  # retrieved: nobody may be waiting any more
        self.waiting.clear()
