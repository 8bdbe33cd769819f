"""Heartbeats: the DPE's only evidence that the assembly is alive (DESIGN §3)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from guest_agent.monitors import Job, Scheduler
from pcloud.bus import BusError, Message
from pcloud.wire.heartbeat import HeartbeatText

try:        # CPython's own md5: hashlib would load OpenSSL (2.4 MiB of RSS) for one digest
    from _md5 import md5
except ImportError:         # an interpreter built without it
    from hashlib import md5

log = logging.getLogger(__name__)

# Seconds after a reconnect at which the agent beats again (only those shorter than its
# interval): see Heartbeater.after_reconnect.
REBEATS = (0.25, 0.6)


def state_digest(states: dict[str, str]) -> str:
    """md5 of the sorted ``name=state`` lines joined by newlines (empty string: no resources)."""
    text = "\n".join(f"{name}={state}" for name, state in sorted(states.items()))
    return md5(text.encode("utf-8")).hexdigest()


class Heartbeater:
    """Publishes ``<heartbeat>`` every interval on a fixed grid (no drift).

    The beats are jobs of the agent's scheduler, on its one timer thread (no thread of their
    own). ``addresses`` returns the ``addresses`` attribute of the next beat, or None to leave
    it out (see guest_agent.addresses.AddressTracker: only when the set changed).
    """

    def __init__(self, publish: Callable[[str, Message], None], topic: str,
                 attrs: dict[str, str], interval: float,
                 states: Callable[[], dict[str, str]], now: Callable[[], str],
                 scheduler: Scheduler | None = None,
                 addresses: Callable[[], str | None] | None = None) -> None:
        self._publish = publish
        self._topic = topic
        self._attrs = attrs
        self._interval = interval
        self._states = states
        self._now = now
        self._addresses = addresses
        self._seq = 0
        self._lock = threading.Lock()
        self._text = HeartbeatText.fixed(attrs)
        self._digested: dict[str, str] | None = None
        self._digest = ""
        self._own_scheduler = scheduler is None
        self._scheduler = scheduler or Scheduler(workers=1)
        self._periodic: Job | None = None
        self._rebeats: list[Job] = []
        self._stopped = False

    def start(self) -> None:
        self._periodic = self._scheduler.add("heartbeat", self._interval, self.beat,
                                             first_delay=0, inline=True)

    def stop(self) -> None:
        self._stopped = True
        for job in [self._periodic, *self._rebeats]:
            if job is not None:
                job.cancel()
        if self._own_scheduler:
            self._scheduler.stop()

    def beat(self) -> None:
        """Send one heartbeat now (a string built from parts: an idle agent's main cost)."""
        with self._lock:
            self._seq += 1
            states = self._states()
            if states != self._digested:
                self._digested = dict(states)
                self._digest = state_digest(states)
            addresses = self._addresses() if self._addresses is not None else None
            body = self._text.beat(self._seq, self._interval, self._digest, self._now(),
                                   addresses)
        try:
            self._publish(self._topic, Message(body=body, subject="heartbeat", opcode="heartbeat"))
        except BusError as exc:
            log.warning("heartbeat %d not sent: %s", self._seq, exc)

    def after_reconnect(self) -> None:
        """Beat now, and again ``REBEATS`` seconds later.

        Every client of a restarted or thawed broker gets it back at the same moment, so the
        beat sent at once often goes out before the DPE has re-attached its heartbeat queue
        (a restarted broker has none, a dropped connection's is deleted) and is routed
        nowhere; the DPE, waiting for it to end its mass loss and re-probe, then got the next
        beat a whole interval later (a soak: every deployable ``degraded`` up to 1 s after
        the broker was back and everyone reconnected).
        """
        if self._stopped:
            return
        self.beat()
        for job in self._rebeats:
            job.cancel()
        self._rebeats = [self._scheduler.once("rebeat", delay, self.beat)
                         for delay in REBEATS if delay < self._interval]
