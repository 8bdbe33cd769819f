"""The client side of method calls: pending calls waiting for their responses.

A call keeps its request so that it is resent (same message id) after a reconnect; the
server answers a repeat from its cache (``pcloud.bus.server``). Responses are matched by
correlation id on the proton thread, so a waiting caller never needs the dispatcher. A call
may name who must answer it (``senders``: broker logins): a response from anyone else, or
without a ``user_id``, is dropped and logged, and the call goes on waiting.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Collection
from concurrent.futures import Future

from pcloud.bus.message import Message

log = logging.getLogger("pcloud.bus")


class Waiters:
    """Pending calls by correlation id, with the request kept for resending."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: dict[str, tuple[Future, str, Message, Collection[str] | None]] = {}

    def add(self, correlation_id: str, address: str, request: Message,
            senders: Collection[str] | None = None) -> Future:
        future: Future = Future()
        with self._lock:
            self._pending[correlation_id] = (future, address, request, senders)
        return future

    def remove(self, correlation_id: str) -> None:
        with self._lock:
            self._pending.pop(correlation_id, None)

    def resolve(self, response: Message) -> None:
        """Hand a response to its caller; unknown or late responses are logged and dropped."""
        with self._lock:
            entry = self._pending.get(response.correlation_id or "")
            senders = entry[3] if entry is not None else None
            forged = not response.user_id or (senders is not None
                                              and response.user_id not in senders)
            if entry is not None and not forged:
                del self._pending[response.correlation_id or ""]
        if entry is None:
            log.info("dropping a response nobody waits for (subject %s, correlation id %s)",
                     response.subject, response.correlation_id)
            return
        if forged:
            log.warning("dropping a response to %s from %s: only %s may answer it",
                        response.subject, response.user_id or "(no user_id)",
                        ", ".join(sorted(senders)) if senders else "an identified sender")
            return
        entry[0].set_result(response)

    def pending_requests(self) -> list[tuple[str, Message]]:
        with self._lock:
            return [(address, request) for _f, address, request, _s in self._pending.values()]

    def fail_all(self, exc: Exception) -> None:
        with self._lock:
            entries = list(self._pending.values())
            self._pending.clear()
        for future, _address, _request, _senders in entries:
            if not future.done():
                future.set_exception(exc)
