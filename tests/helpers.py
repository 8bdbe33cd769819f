"""Small helpers shared by test modules (fixtures live in conftest.py).

Deadlines follow the work: a busy host makes the suite slower, not red. The session's broker
start is timed (conftest.py) against what it takes on an idle 2-core host, and every deadline
of :func:`wait_for` and conftest's ``wait_until`` is multiplied by that ratio (at least 1, at
most :data:`MAX_SLOWNESS`); ``PCLOUD_TEST_SLOWNESS`` sets it by hand.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable

#: Seconds a private broker node takes to start on an idle 2-core host (measured: 4.9 s).
NOMINAL_BROKER_START = 6.0
MAX_SLOWNESS = 5.0
_slowness = [1.0]


def measured_slowness(broker_start: float, nominal: float = NOMINAL_BROKER_START) -> float:
    """How much slower than nominal this host is now, from one timed piece of work."""
    return min(MAX_SLOWNESS, max(1.0, broker_start / nominal))


def set_slowness(factor: float) -> None:
    """The session's factor (``PCLOUD_TEST_SLOWNESS``, when set, wins)."""
    override = os.environ.get("PCLOUD_TEST_SLOWNESS")
    _slowness[0] = float(override) if override else factor


def slowness() -> float:
    return _slowness[0]


def scaled(seconds: float) -> float:
    """A deadline of ``seconds`` on an idle host, stretched to this host's current pace."""
    return seconds * _slowness[0]


def wait_for(predicate: Callable[[], object], timeout: float = 10.0,
             step: float = 0.01) -> object:
    """Poll until ``predicate`` returns something truthy and return it; AssertionError after
    ``timeout`` seconds (scaled), so a test waits on a condition with a deadline, never on a
    sleep."""
    timeout = scaled(timeout)
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
