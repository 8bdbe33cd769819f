"""The client side of method calls: pending calls waiting for their responses.

A call keeps its request so that it is resent (same message id) after a reconnect; the
server answers a repeat from its cache (``pcloud.bus.server``). Responses are matched by
correlation id on the proton thread, so a waiting caller never needs the dispatcher.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import Future

from pcloud.bus.message import Message

log = logging.getLogger("pcloud.bus")


class Waiters:
    """Pending calls by correlation id, with the request kept for resending."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: dict[str, tuple[Future, str, Message]] = {}

    def add(self, correlation_id: str, address: str, request: Message) -> Future:
        future: Future = Future()
        with self._lock:
            self._pending[correlation_id] = (future, address, request)
        return future

    def remove(self, correlation_id: str) -> None:
        with self._lock:
            self._pending.pop(correlation_id, None)

    def resolve(self, response: Message) -> None:
        """Hand a response to its caller; unknown or late responses are logged and dropped."""
        with self._lock:
            entry = self._pending.pop(response.correlation_id or "", None)
        if entry is None:
            log.info("dropping a response nobody waits for (subject %s, correlation id %s)",
                     response.subject, response.correlation_id)
            return
        entry[0].set_result(response)

    def pending_requests(self) -> list[tuple[str, Message]]:
        with self._lock:
            return [(address, request) for _f, address, request in self._pending.values()]

    def fail_all(self, exc: Exception) -> None:
        with self._lock:
            entries = list(self._pending.values())
            self._pending.clear()
        for future, _address, _request in entries:
            if not future.done():
                future.set_exception(exc)
