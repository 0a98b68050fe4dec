from __future__ import annotations

from collections.abc import Iterator

import pytest

from lbbench.system.procs import Supervisor


@pytest.fixture
def supervisor() -> Iterator[Supervisor]:
    sup = Supervisor()
    try:
        yield sup
    finally:
        sup.close()
