"""The control pipe between lbbench and its own children.

The parent writes one JSON object per line to a child's stdin (endpoint updates, fault
changes). EOF on stdin means the parent is gone: the child exits at once. This doubles as
the watchdog pipe of the no-orphans rule.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import stat
import sys
from collections.abc import Callable
from typing import IO, Any

Message = dict[str, Any]


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
    buf = bytearray()

    def readable() -> None:
        try:
            data = os.read(fd, 65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            os._exit(0)
        buf.extend(data)
        while (nl := buf.find(b"\n")) >= 0:
            line = bytes(buf[:nl])
            del buf[: nl + 1]
            if line.strip():
                with contextlib.suppress(ValueError):
                    on_message(json.loads(line))

    os.set_blocking(fd, False)
    loop.add_reader(fd, readable)
    return True


def send(stdin: IO[bytes] | None, message: Message) -> bool:
    """Parent side: write one message; False if the child is gone."""
    if stdin is None:
        return False
    try:
        stdin.write(json.dumps(message, separators=(",", ":")).encode() + b"\n")
        stdin.flush()
    except (BrokenPipeError, ValueError, OSError):
        return False
    return True
