"""Method requests on ``pcloud.agent.<dep>.<asm>``, answered concurrently per resource.

``Bus.serve`` runs handlers one at a time on the bus's dispatcher thread; a 20 s OCF start
would then hold up a probe of another resource. Here requests are taken off the queue in
order, queued per resource (so one resource's operations keep their order), and run on a
small pool; the response goes to ``reply_to`` verbatim, as ``Bus.serve`` would send it.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict, deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from lxml import etree

from pcloud import protocol, xmlsafe
from pcloud.bus import Bus, BusError, Message, MethodError

log = logging.getLogger(__name__)

Handler = Callable[[str, etree._Element], etree._Element]
METHODS = ("resource_start", "resource_stop", "resource_monitor", "resource_cancel",
           "resource_status", "agent_info")


class AgentServer:
    """Consumes the agent queue and answers every request exactly once per request id."""

    def __init__(self, bus: Bus, queue: str, handler: Handler, workers: int = 8) -> None:
        self.bus = bus
        self.queue = queue
        self.handler = handler
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="op")
        self._lock = threading.Lock()
        self._serial: dict[str, deque[Callable[[], None]]] = {}
        self._answers: OrderedDict[str, Message | None] = OrderedDict()

    def start(self) -> None:
        self.bus.consume(self.queue, self.on_request)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def on_request(self, request: Message) -> None:
        """Runs on the bus's dispatcher thread: cheap checks, then queue the work."""
        if not request.reply_to:
            log.warning("request %r without reply_to ignored", request.subject)
            return
        key = request.id
        with self._lock:
            if key is not None and key in self._answers:
                cached = self._answers[key]
                if cached is not None:
                    self._send(request, cached)
                return
            if key is not None:
                self._answers[key] = None
                while len(self._answers) > 512:
                    self._answers.popitem(last=False)
        method = request.subject or ""
        if method not in METHODS:
            self._answer(request, protocol.error_response(
                "unknown_method", f"queue {self.queue} has no method {method!r} "
                f"(known: {', '.join(METHODS)})"))
            return
        try:
            root = xmlsafe.parse(request.body, source=f"{method} request")
        except xmlsafe.XMLError as exc:
            where = f" at line {exc.line}" if exc.line else ""
            self._answer(request, protocol.error_response(
                "malformed_xml", f"request body is not acceptable XML{where}: {exc.message}"))
            return
        resource = root.find("resource") if root.tag == "resource_op" else None
        name = resource.get("name", "") if resource is not None else ""
        self._submit(name, lambda: self._run(request, method, root))

    def _submit(self, name: str, work: Callable[[], None]) -> None:
        if not name:
            self._pool.submit(work)
            return
        with self._lock:
            queue = self._serial.get(name)
            if queue is not None:
                queue.append(work)
                return
            self._serial[name] = deque([work])
        self._pool.submit(self._drain, name)

    def _drain(self, name: str) -> None:
        while True:
            with self._lock:
                queue = self._serial[name]
                if not queue:
                    del self._serial[name]
                    return
                work = queue.popleft()
            work()

    def _run(self, request: Message, method: str, root: etree._Element) -> None:
        try:
            body = protocol.ok_response(self.handler(method, root))
        except MethodError as exc:
            body = protocol.error_response(exc.code, exc.message, exc.rc or 1)
        except Exception as exc:
            log.exception("handler of %s crashed", method)
            body = protocol.error_response("internal_error",
                                           f"{method} failed inside the agent: {exc}")
        self._answer(request, body)

    def _answer(self, request: Message, body: str) -> None:
        response = Message(body=body, subject=request.subject, opcode="method_response",
                           correlation_id=request.correlation_id or request.id)
        if request.id is not None:
            with self._lock:
                self._answers[request.id] = response
        self._send(request, response)

    def _send(self, request: Message, response: Message) -> None:
        try:
            self.bus.send(request.reply_to or "", response)
        except (BusError, ValueError) as exc:
            log.warning("cannot answer %s to %r: %s", request.subject, request.reply_to, exc)
