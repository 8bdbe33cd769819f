"""Small helpers shared by test modules (fixtures live in conftest.py)."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable


def wait_for(predicate: Callable[[], object], timeout: float = 10.0,
             step: float = 0.01) -> object:
    """Poll until ``predicate`` returns something truthy and return it; AssertionError after
    ``timeout`` seconds, so a test waits on a condition with a deadline, never on a sleep."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    raise AssertionError(f"condition not met within {timeout} s")


def ignores_sigterm(pid: int) -> bool:
    """True when process ``pid`` has SIGTERM ignored (``SigIgn`` in /proc), i.e. it is
    ready for a test of stop escalation."""
    with open(f"/proc/{pid}/status") as f:
        mask = next(line for line in f if line.startswith("SigIgn:")).split()[1]
    return bool(int(mask, 16) & (1 << (signal.SIGTERM - 1)))
