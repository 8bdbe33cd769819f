"""Connecting to a broker that may not be up yet: the one back-off loop of every daemon.

cped, dped and the guest agent all start before, or during an outage of, their broker. Each
waits for it the same way: a new :class:`Bus` per attempt, back-off doubling to a cap, one
warning when the wait begins and one line when it ends, and an early return when asked to
stop. Only an unreachable broker is waited for by default: refused credentials or an untrusted
certificate cannot get better by waiting, so they are raised at once (typed, see
:mod:`pcloud.bus.errors`).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from pcloud.bus.bus import Bus
from pcloud.bus.errors import BusError, BusUnreachable
from pcloud.bus.recovery import capped_doubling

log = logging.getLogger("pcloud.bus")


@dataclass(frozen=True)
class Backoff:
    """Waits between attempts: ``first``, doubling, at most ``cap`` seconds."""

    first: float = 0.5
    cap: float = 5.0

    def delays(self) -> Iterator[float]:
        return capped_doubling(self.first, self.cap)


def connect(make_bus: Callable[[], Bus], stop: threading.Event | None = None, *,
            attempt: float = 10.0, backoff: Backoff = Backoff(),
            retry: tuple[type[BusError], ...] = (BusUnreachable,)) -> Bus | None:
    """A started bus from ``make_bus()``, trying again while the error is one of ``retry``;
    None when ``stop`` is set first. Any other BusError is raised at once."""
    stop = stop or threading.Event()
    delays = backoff.delays()
    waiting = False
    while not stop.is_set():
        bus = make_bus()
        try:
            bus.start(timeout=attempt)
        except retry as exc:
            bus.close()
            delay = next(delays)
            if not waiting:
                log.warning("%s; waiting for the broker (retrying every %g s at most)", exc,
                            backoff.cap)
                waiting = True
            stop.wait(delay)
            continue
        if waiting:
            log.info("the broker answers now")
        return bus
    return None
