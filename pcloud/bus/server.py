"""The server side of method calls: one ``RequestServer`` per served queue.

``accept`` runs on the proton thread for each request, in arrival order: it drops repeats
(``Answers``), parses the body and computes the serial key there, so ordering is decided
before any concurrency. Handlers then run on the queue's own ``Lanes`` pool. Every request
message gets exactly one response message with a fresh id and the request's correlation id,
including a repeat (answered from the cache): a consumer that drops seen ids must not drop
the answer to a request it sent again. A server never raises and never stays silent, except
to a request whose ``reply_to`` is missing or not an address the broker accepts (the profile
decides): there is nowhere to answer, so it is logged (once per address) and dropped, and
to a request without a ``user_id`` (no one can say who sent it: DESIGN §3).

A request may name its method in the body instead of the subject, as a client of another
stack must (AMQP 0-9-1 through RabbitMQ loses every header; the subject becomes the routing
key): ``<request method="deployable_status"><deployable name="dep1"/></request>``.
``authorize(method, request)`` decides, by the request's ``user_id``, whether its sender may
call that method: a refusal is answered with the error ``not_authorized``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Hashable, Mapping
from typing import Any

from pcloud import protocol, xmlsafe
from pcloud.bus.dedup import Answers, RecentIds
from pcloud.bus.errors import MethodError
from pcloud.bus.lanes import Lanes
from pcloud.bus.message import Message

log = logging.getLogger("pcloud.bus")

Handler = Callable[[Any, Message], Any]
SerialKey = Callable[[str, Any, Message], Hashable | None]
Authorize = Callable[[str, Message], str | None]
Reply = Callable[[str, Message], None]
ReplyCheck = Callable[[str], bool]
REFUSED_LOGGED = 256  # refused reply_to addresses remembered so that each is logged once


class RequestServer:
    """Turns method requests on one queue into responses."""

    def __init__(self, queue: str, handlers: Mapping[str, Handler], reply: Reply, *,
                 workers: int = 1, serial_key: SerialKey | None = None,
                 reply_ok: ReplyCheck | None = None,
                 authorize: Authorize | None = None) -> None:
        self.queue = queue
        self.handlers = dict(handlers)
        self._reply = reply
        self._serial_key = serial_key
        self._reply_ok = reply_ok
        self._authorize = authorize
        self._anonymous = RecentIds(REFUSED_LOGGED)
        self._refused = RecentIds(REFUSED_LOGGED)
        self._answers = Answers()
        self.lanes = Lanes(queue, workers)

    def accept(self, request: Message) -> None:
        """Take one request off the queue (proton thread): cheap checks, then queue it."""
        if not request.reply_to:
            log.warning("request %r on %s has no reply_to; ignored", request.subject, self.queue)
            return
        if self._reply_ok is not None and not self._reply_ok(request.reply_to):
            # nowhere to answer: sending there would only make the broker end the session
            log_at = log.debug if self._refused.seen(request.reply_to) else log.warning
            log_at("request %r on %s: reply_to %r is no address this server answers; dropped",
                   request.subject, self.queue, request.reply_to)
            return
        if not request.user_id:
            log_at = log.debug if self._anonymous.seen(request.reply_to) else log.warning
            log_at("request %r on %s without user_id (reply_to %s): dropped", request.subject,
                   self.queue, request.reply_to)
            return
        new, body = self._answers.claim(request)
        if not new:
            if body is not None:
                log.info("repeated request %s (%s): answering from cache", request.id,
                         request.subject)
                self._send(request, body)
            return
        if request.opcode not in (None, "method_request"):
            self._finish(request, protocol.error_response(
                "invalid_opcode", f"queue {self.queue} takes method requests (pcloud.opcode "
                f"method_request), not {request.opcode!r}"))
            return
        try:
            root = xmlsafe.parse(request.body, source=f"{request.subject} request")
        except xmlsafe.XMLError as exc:
            where = f" at line {exc.line}" if exc.line else ""
            self._finish(request, protocol.error_response(
                "malformed_xml", f"request body is not acceptable XML{where}: {exc.message}"))
            return
        if root.tag == "request":
            root = self._unwrap(root, request)
            if root is None:
                return
        method = request.subject or ""
        handler = self.handlers.get(method)
        if handler is None:
            known = ", ".join(sorted(self.handlers)) or "none"
            self._finish(request, protocol.error_response(
                "unknown_method", f"queue {self.queue} has no method {method!r} (known: {known})"))
            return
        refusal = self._authorize(method, request) if self._authorize else None
        if refusal is not None:
            log.warning("%s on %s refused for %s: %s", method, self.queue, request.user_id,
                        refusal)
            self._finish(request, protocol.error_response("not_authorized", refusal))
            return
        try:
            key = self._serial_key(method, root, request) if self._serial_key else None
        except Exception as exc:
            log.exception("serial key of %s on %s failed", method, self.queue)
            self._finish(request, _crash_response(method, exc))
            return
        if not self.lanes.submit(key, lambda: self._run(handler, method, root, request)):
            log.info("request %s (%s) arrived after %s stopped serving", request.id, method,
                     self.queue)

    def _unwrap(self, root: Any, request: Message) -> Any:
        """The body inside ``<request method="…">``, with the method as the subject; None
        (after an error response) when the wrapper is not one method and one element."""
        method = root.get("method") or ""
        children = [child for child in root if isinstance(child.tag, str)]
        if not method or len(children) != 1 or (root.text or "").strip():
            self._finish(request, protocol.error_response(
                "invalid_request", '<request> must have a method attribute and hold exactly one '
                'element: <request method="deployable_status"><deployable name="dep1"/>'
                '</request>'))
            return None
        request.subject = method
        body = children[0]
        root.remove(body)       # a document of its own, for the handler's schema checks
        body.tail = None
        return body

    def _run(self, handler: Handler, method: str, root: Any, request: Message) -> None:
        try:
            body = protocol.ok_response(handler(root, request))
        except MethodError as exc:
            body = protocol.error_response(exc.code, exc.message, exc.rc or 1)
        except Exception as exc:
            log.exception("handler of %s on %s crashed", method, self.queue)
            body = _crash_response(method, exc)
        self._finish(request, body)

    def _finish(self, request: Message, body: str) -> None:
        self._send(request, body)
        for repeat in self._answers.finish(request, body):
            self._send(repeat, body)

    def _send(self, request: Message, body: str) -> None:
        response = Message(body=body, subject=request.subject, opcode="method_response",
                           correlation_id=request.correlation_id or request.id)
        try:
            self._reply(request.reply_to or "", response)
        except Exception as exc:
            log.warning("cannot answer %s to %r: %s", request.subject, request.reply_to, exc)


def _crash_response(method: str, exc: Exception) -> str:
    return protocol.error_response("internal_error",
                                   f"{method} failed: {type(exc).__name__}: {exc}")
