"""Where the repository and the tests live, for tests at any depth of tests/."""

from __future__ import annotations

from pathlib import Path

TESTS = Path(__file__).resolve().parent.parent
REPO = TESTS.parent
L4_SCENARIOS = TESTS / "helpers" / "l4_scenarios.py"
KERNEL_SYNC_SCENARIOS = TESTS / "helpers" / "kernel_sync_scenarios.py"
