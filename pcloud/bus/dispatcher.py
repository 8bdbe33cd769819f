"""The callback thread of a Bus: subscriptions and on_reconnect callbacks run here.

User code never runs on the proton thread. Callbacks run one at a time, in arrival order
(across all subscriptions of the Bus); an exception is logged, never propagated. They may
block, e.g. in ``bus.call`` (responses are matched on the proton thread, and method handlers
run on their own pools), but while one runs the other subscriptions wait.

The proton thread collects callbacks with ``defer`` and hands them over with ``flush`` once
per batch of protocol events: one wake-up of this thread per batch, not per message.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from typing import Any

log = logging.getLogger("pcloud.bus")

_STOP = object()
MAX_BATCH = 256

Call = tuple[Callable[..., Any], tuple[Any, ...]]


class Dispatcher:
    """One thread that runs queued callables in order."""

    def __init__(self, name: str) -> None:
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._batch: list[Call] = []
        self._thread = threading.Thread(target=self._run, name=f"bus-{name}-dispatch",
                                        daemon=True)

    def start(self) -> None:
        self._thread.start()

    def defer(self, fn: Callable[..., Any], *args: Any) -> None:
        """Queue ``fn(*args)`` for the next ``flush``; proton thread only."""
        self._batch.append((fn, args))
        if len(self._batch) >= MAX_BATCH:
            self.flush()

    def flush(self) -> None:
        """Hand the deferred callbacks to the dispatcher thread; proton thread only."""
        if self._batch:
            self._queue.put(self._batch)
            self._batch = []

    def stop(self, timeout: float) -> None:
        """Run what is queued, then end the thread (waits up to ``timeout``)."""
        self._queue.put(_STOP)
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("bus dispatcher still busy in a callback after %.1f s", timeout)

    def _run(self) -> None:
        while True:
            batch = self._queue.get()
            if batch is _STOP:
                return
            for fn, args in batch:
                try:
                    fn(*args)
                except Exception:
                    log.exception("bus callback %s failed", getattr(fn, "__qualname__", fn))
