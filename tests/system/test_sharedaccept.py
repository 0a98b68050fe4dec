"""The shared accept's load array: whom a worker measures itself against (lbbench.system.sharedaccept)."""

from __future__ import annotations

import os

from lbbench.system.sharedaccept import SLACK, Loads, create_loads


def test_a_worker_stepping_aside_counts_with_its_load_when_it_stepped_aside() -> None:
    fd = create_loads(2)
    a, b = Loads(fd, 2, 0), Loads(fd, 2, 1)
    os.close(fd)
    try:
        a.mine, b.mine = 9, 3
        assert a.excess() == 9 - 3 - SLACK
        a.step_aside(True)
        a.mine = 0  # its short connections close while it waits ...
        b.mine = 10
        assert b.excess() == 10 - 9 - SLACK  # ... but to b it is still at 9: b does not step aside as well
        a.step_aside(False)
        assert b.excess() == 10 - 0 - SLACK  # accepting again: its real count
        assert [a.mine, b.mine] == [0, 10]  # the marks are slots of their own
    finally:
        a.close()
        b.close()
