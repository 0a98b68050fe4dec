"""Worker -> parent messages: length-prefixed pickles on a dedicated pipe.

The worker's stdout file descriptor is that pipe (the worker moves its own `sys.stdout`
to stderr first, so a stray print cannot corrupt it). Only lbbench's own processes are at
either end, so pickle is safe here and carries numpy arrays without copies into text.
"""

from __future__ import annotations

import asyncio
import os
import pickle
import struct
from collections.abc import Callable
from typing import Any

Message = dict[str, Any]
_HEADER = struct.Struct("<I")


def encode(message: Message) -> bytes:
    payload = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return _HEADER.pack(len(payload)) + payload


class FrameReader(asyncio.Protocol):
    """Reads frames from a pipe and calls `on_message` for each, then `on_eof` once."""

    def __init__(self, on_message: Callable[[Message], None], on_eof: Callable[[], None]) -> None:
        self._buf = bytearray()
        self._on_message = on_message
        self._on_eof = on_eof
        self.transport: asyncio.BaseTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        buf = self._buf
        buf.extend(data)
        while len(buf) >= _HEADER.size:
            (size,) = _HEADER.unpack_from(buf)
            if len(buf) < _HEADER.size + size:
                return
            payload = bytes(buf[_HEADER.size : _HEADER.size + size])
            del buf[: _HEADER.size + size]
            self._on_message(pickle.loads(payload))

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._on_eof()


class PipeWriter:
    """Non-blocking frame writer for a worker's hot loop: a slow reader never stalls sending.

    Frames queue up in memory while the pipe is full; `send(..., droppable=True)` frames
    (progress reports) are skipped while a backlog exists. `finish()` writes the rest blocking.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, fd: int) -> None:
        self._loop = loop
        self._fd = fd
        self._pending = bytearray()
        self._watching = False
        os.set_blocking(fd, False)

    def send(self, message: Message, *, droppable: bool = False) -> None:
        if droppable and self._pending:
            return
        self._pending.extend(encode(message))
        self._flush()

    def _flush(self) -> None:
        try:
            while self._pending:
                n = os.write(self._fd, self._pending)
                del self._pending[:n]
        except BlockingIOError:
            if not self._watching:
                self._loop.add_writer(self._fd, self._flush)
                self._watching = True
            return
        if self._watching:
            self._loop.remove_writer(self._fd)
            self._watching = False

    def finish(self, message: Message | None = None) -> None:
        """Write everything still queued, and `message` last, blocking."""
        if self._watching:
            self._loop.remove_writer(self._fd)
            self._watching = False
        os.set_blocking(self._fd, True)
        if message is not None:
            self._pending.extend(encode(message))
        view = memoryview(bytes(self._pending))
        self._pending.clear()
        while view:
            n = os.write(self._fd, view)
            view = view[n:]
