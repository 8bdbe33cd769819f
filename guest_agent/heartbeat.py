"""Heartbeats: the DPE's only evidence that the assembly is alive (DESIGN §3)."""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable

from lxml import etree

from pcloud.bus import BusError, Message

log = logging.getLogger(__name__)

# Seconds after a reconnect at which the agent beats again (only those shorter than its
# interval): see Heartbeater.after_reconnect.
REBEATS = (0.25, 0.6)


def state_digest(states: dict[str, str]) -> str:
    """md5 of the sorted ``name=state`` lines joined by newlines (empty string: no resources)."""
    text = "\n".join(f"{name}={state}" for name, state in sorted(states.items()))
    return hashlib.md5(text.encode("utf-8")).hexdigest()


class Heartbeater:
    """Publishes ``<heartbeat>`` every interval on a fixed grid (no drift)."""

    def __init__(self, publish: Callable[[str, Message], None], topic: str,
                 attrs: dict[str, str], interval: float,
                 states: Callable[[], dict[str, str]], now: Callable[[], str]) -> None:
        self._publish = publish
        self._topic = topic
        self._attrs = attrs
        self._interval = interval
        self._states = states
        self._now = now
        self._seq = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name="heartbeat", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def beat(self) -> None:
        """Send one heartbeat now."""
        with self._lock:
            self._seq += 1
            elem = etree.Element("heartbeat", self._attrs)
            elem.set("seq", str(self._seq))
            elem.set("interval", f"{self._interval:g}")
            elem.set("digest", state_digest(self._states()))
            elem.set("time", self._now())
        try:
            self._publish(self._topic, Message(body=elem, subject="heartbeat", opcode="heartbeat"))
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
        self.beat()
        for delay in REBEATS:
            if delay < self._interval:
                timer = threading.Timer(delay, self._rebeat)
                timer.daemon = True
                timer.start()

    def _rebeat(self) -> None:
        if not self._stop.is_set():
            self.beat()

    def _loop(self) -> None:
        due = time.monotonic()
        while not self._stop.is_set():
            self.beat()
            due += self._interval
            delay = due - time.monotonic()
            if delay < 0:
                due = time.monotonic()
                delay = 0
            if self._stop.wait(delay):
                return
