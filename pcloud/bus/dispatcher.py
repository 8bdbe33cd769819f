"""The callback thread of a Bus: user code never runs on the proton thread.

Callbacks may block (e.g. a handler calling ``bus.call``) without stalling the connection;
they run one at a time, in arrival order. An exception is logged, never propagated.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from typing import Any

log = logging.getLogger("pcloud.bus")

_STOP = object()


class Dispatcher:
    """One thread that runs queued callables in order."""

    def __init__(self, name: str) -> None:
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=f"bus-{name}-dispatch",
                                        daemon=True)

    def start(self) -> None:
        self._thread.start()

    def put(self, fn: Callable[..., Any], *args: Any) -> None:
        """Queue ``fn(*args)``; safe from any thread."""
        self._queue.put((fn, args))

    def in_dispatcher(self) -> bool:
        """True when called from the dispatcher thread itself."""
        return threading.current_thread() is self._thread

    def stop(self, timeout: float) -> None:
        """Run what is queued, then end the thread (waits up to ``timeout``)."""
        self._queue.put(_STOP)
        if self._thread.is_alive() and not self.in_dispatcher():
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("bus dispatcher still busy in a callback after %.1f s", timeout)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            fn, args = item
            try:
                fn(*args)
            except Exception:
                log.exception("bus callback %s failed", getattr(fn, "__qualname__", fn))
