"""Request/response on top of queues: the client's waiters and the server's dispatch.

Both sides are at-least-once tolerant: the client resends pending requests after a
reconnect, and the server answers a repeated request id from a cache of recent responses
instead of running the handler again.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from typing import Any

from pcloud import protocol, xmlsafe
from pcloud.bus.errors import MethodError
from pcloud.bus.message import Message

log = logging.getLogger("pcloud.bus")

Handler = Callable[[Any, Message], Any]


class RecentIds:
    """A bounded set of recently seen message ids (oldest forgotten first)."""

    def __init__(self, size: int = 4096) -> None:
        self._size = size
        self._ids: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.Lock()

    def seen(self, message_id: str | None) -> bool:
        """Record the id; True if it was already there. Messages without id are never dups."""
        if message_id is None:
            return False
        with self._lock:
            if message_id in self._ids:
                return True
            self._ids[message_id] = None
            if len(self._ids) > self._size:
                self._ids.popitem(last=False)
            return False


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


class RequestServer:
    """Turns method requests on one queue into responses; never raises, never stays silent."""

    def __init__(self, queue: str, handlers: Mapping[str, Handler],
                 reply: Callable[[str, Message], None], cache_size: int = 256) -> None:
        self.queue = queue
        self.handlers = dict(handlers)
        self._reply = reply
        self._cache_size = cache_size
        self._answers: OrderedDict[str, Message | None] = OrderedDict()

    def handle(self, request: Message) -> None:
        """Answer one request (runs on the dispatcher thread)."""
        if not request.reply_to:
            log.warning("request %r on %s has no reply_to; ignored", request.subject, self.queue)
            return
        key = request.id
        if key is not None and key in self._answers:
            cached = self._answers[key]
            if cached is not None:
                log.info("repeated request %s (%s): answering from cache", key, request.subject)
                self._reply(request.reply_to, cached)
            return
        if key is not None:
            self._answers[key] = None
        body = self._respond(request)
        response = Message(body=body, subject=request.subject, opcode="method_response",
                           correlation_id=request.correlation_id or request.id)
        if key is not None:
            self._answers[key] = response
            while len(self._answers) > self._cache_size:
                self._answers.popitem(last=False)
        self._reply(request.reply_to, response)

    def _respond(self, request: Message) -> str:
        method = request.subject or ""
        handler = self.handlers.get(method)
        if handler is None:
            known = ", ".join(sorted(self.handlers)) or "none"
            return protocol.error_response(
                "unknown_method", f"queue {self.queue} has no method {method!r} (known: {known})")
        try:
            root = xmlsafe.parse(request.body, source=f"{method} request")
        except xmlsafe.XMLError as exc:
            where = f" at line {exc.line}" if exc.line else ""
            return protocol.error_response("malformed_xml",
                                           f"request body is not acceptable XML{where}: "
                                           f"{exc.message}")
        try:
            return protocol.ok_response(handler(root, request))
        except MethodError as exc:
            return protocol.error_response(exc.code, exc.message, exc.rc or 1)
        except Exception as exc:
            log.exception("handler of %s on %s crashed", method, self.queue)
            return protocol.error_response("internal_error",
                                           f"{method} failed: {type(exc).__name__}: {exc}")
