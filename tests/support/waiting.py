"""The one way a test waits: :func:`wait_until`, a poll with a deadline (never a sleep).

Deadlines follow the work: a busy host makes the suite slower, not red. The session's broker
start is timed (conftest.py) against what it takes on an idle 2-core host, and every deadline
of :func:`wait_until` (and of the collectors in :mod:`support.events`) is multiplied by that
ratio (at least 1, at most :data:`MAX_SLOWNESS`); ``PCLOUD_TEST_SLOWNESS`` sets it by hand.

Import this module as ``support.waiting`` (``tests/`` is on ``sys.path``): the factor lives
here, once.
"""

from __future__ import annotations

import os
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


def timed_out(timeout: float, what: str) -> AssertionError:
    """The failure of a wait for ``what`` whose (scaled) ``timeout`` has passed."""
    return AssertionError(f"timed out after {timeout:g} s waiting for {what} (deadlines "
                          f"scaled {slowness():.2g}x to this host's pace)")


def wait_until(predicate: Callable[[], object], timeout: float = 10.0,
               what: str = "condition", step: float = 0.05) -> object:
    """Poll ``predicate`` until it returns something truthy and return that; AssertionError
    naming ``what`` once ``timeout`` seconds (scaled to the host's pace) have passed."""
    timeout = scaled(timeout)
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise timed_out(timeout, what)
        time.sleep(step)
