"""Address blocks claimed with flock: a second claim waits until the holder is gone, however it goes."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

from lbbench.system.addrlock import blocks_of, claim_blocks


def test_blocks_cover_every_address_by_its_16() -> None:
    assert blocks_of(["127.10.0.0/16", "127.96.0.5", "127.96.3.0/24", "127.8.0.0/15"]) == \
        ["127.8.0.0/16", "127.9.0.0/16", "127.10.0.0/16", "127.96.0.0/16"]


HOLDER = """
import sys, time
from pathlib import Path
from lbbench.system.addrlock import claim_blocks
with claim_blocks(["127.77.0.0/16"], directory=Path(sys.argv[1])):
    print("held", flush=True)
    time.sleep(60)
"""


def test_a_second_claim_waits_until_the_holder_dies(tmp_path: Path) -> None:
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        waits: list[tuple[str, str]] = []
        got = threading.Event()

        def claim() -> None:
            with claim_blocks(["127.77.0.0/16", "127.78.0.0/16"], lambda b, h: waits.append((b, h)),
                              directory=tmp_path):
                got.set()

        t = threading.Thread(target=claim)
        t.start()
        time.sleep(0.5)
        assert not got.is_set()  # the holder still has it
        assert waits == [("127.77.0.0/16", f"lbbench pid {holder.pid}")]
        holder.kill()  # SIGKILL: the kernel releases the flock
        t.join(10)
        assert got.is_set()
    finally:
        holder.kill()
        holder.communicate()
