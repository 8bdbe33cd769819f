"""The proton thread of a Bus: it alone owns the container, connection, links and deliveries.

Other threads never touch proton objects: they queue a task with ``submit`` (an
``EventInjector`` wakes the container) and, when they need a result, wait on the returned
future with a deadline; messages go with ``post``, which needs no future. One wake-up drains
everything queued so far, and each sender link touched is flushed once per drain. Received
messages go to the receiver's ``on_message`` on this thread; ``on_idle`` runs whenever the
container has handled every pending event, before it waits for I/O, so that consumers can
hand a whole batch to another thread at once. Everything named ``_on_loop_*`` or called from
a proton event runs on this thread only.

Recovery (see the broker facts in docs/protocol.md): proton reconnects with back-off; after a
kill -9 or heartbeat timeout it re-attaches the links that are still locally open, after a
clean broker stop the broker ends the sessions and we close them locally. So a link is
recreated exactly when it is locally closed, never unconditionally. Deliveries not settled by
the broker when the connection drops are sent again (receivers drop duplicates by message
id). A sender link the broker does not attach in ``MAX_LINK_FAILURES`` attempts in a row
(an address it refuses: RabbitMQ may drop the whole connection for one) is given up, and the
messages queued for it are dropped and logged.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from proton import Delivery, Endpoint, Link, SSLDomain
from proton import Message as ProtonMessage
from proton.handlers import EndpointStateHandler, IncomingMessageHandler, MessagingHandler
from proton.reactor import ApplicationEvent, Container, EventInjector

from pcloud.bus.errors import BusError
from pcloud.bus.message import Message
from pcloud.bus.recovery import ResettingBackoff, fatal_at_start, redact

log = logging.getLogger("pcloud.bus")


class _SocketErrorFilter(logging.Filter):
    """proton logs ``ERROR Couldn't recv: ConnectionResetError(...)`` whenever the broker
    drops the connection (a normal broker stop): say what it means, as a warning; the bus
    reconnects by itself."""

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        if text.startswith(("Couldn't recv:", "Couldn't send:")):
            record.msg, record.args = f"the broker connection dropped ({text})", None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


logging.getLogger("proton").addFilter(_SocketErrorFilter())

HEARTBEAT = 4.0
PREFETCH = 200
MAX_IDLE_SENDERS = 64
RELINK_DELAY = 1.0
MAX_LINK_FAILURES = 5
CLOSE_DRAIN = 2.0


class LinkSpec:
    """A link the bus wants to exist; ``link`` is the current proton link, if any."""

    def __init__(self, address: str, receiver: bool,
                 on_message: Callable[[Message], None] | None = None) -> None:
        self.address = address
        self.receiver = receiver
        self.on_message = on_message
        self.link: Link | None = None
        self.outbox: deque[ProtonMessage] = deque()
        self.inflight = 0
        self.unconfirmed = False  # the last attach was sent, the broker has not attached it
        self.failures = 0  # attaches in a row the broker did not confirm

    def alive(self) -> bool:
        """True while proton will keep (or re-attach) this link by itself."""
        link = self.link
        if link is None or link.state & Endpoint.LOCAL_CLOSED:
            return False
        return not link.session.state & Endpoint.LOCAL_CLOSED


class _Timer:
    """Adapter so ``Container.schedule`` can call a plain function."""

    def __init__(self, fn: Callable[[], None]) -> None:
        self.fn = fn

    def on_timer_task(self, event: Any) -> None:
        self.fn()


class _Endpoints(EndpointStateHandler):
    """proton's endpoint handler, except that a broker closing the connection never makes us
    close it locally (that would stop reconnecting) unless the bus itself is closing."""

    def __init__(self, loop: EventLoop) -> None:
        super().__init__(False, loop)
        self._loop = loop

    def on_connection_remote_close(self, event: Any) -> None:
        if self._loop.closing:
            super().on_connection_remote_close(event)
            return
        cond = event.connection.remote_condition
        log.warning("broker closed the connection (%s); reconnecting",
                    f"{cond.name}: {cond.description}" if cond else "no error given")


class _Incoming(IncomingMessageHandler):
    """proton's incoming handler, except that each message keeps its encoded form: RabbitMQ
    3.10 hands a 0-9-1 sender's ``user_id`` on as a string where AMQP 1.0 says binary, and
    proton's decoder drops it (:func:`pcloud.bus.message.string_user_id` reads it)."""

    def on_delivery(self, event: Any) -> None:
        delivery = event.delivery
        if not (delivery.link.is_receiver and delivery.readable and not delivery.partial
                and not delivery.aborted):
            super().on_delivery(event)
            return
        event.encoded = delivery.link.recv(delivery.pending)
        delivery.link.advance()
        event.message = ProtonMessage()
        event.message.decode(event.encoded)
        if event.link.state & Endpoint.LOCAL_CLOSED:
            delivery.update(Delivery.RELEASED)
        else:
            self.on_message(event)
            delivery.update(Delivery.ACCEPTED)
        delivery.settle()


class EventLoop(MessagingHandler):
    """Runs one proton Container on its own thread for one Bus."""

    def __init__(self, url: str, name: str, ssl_domain: SSLDomain | None,
                 on_state: Callable[[str], None], on_idle: Callable[[], None],
                 server_name: str | None = None) -> None:
        super().__init__(prefetch=PREFETCH, auto_accept=True, auto_settle=True)
        self.handlers = [_Endpoints(self) if isinstance(h, EndpointStateHandler)
                         else _Incoming(True, self) if isinstance(h, IncomingMessageHandler)
                         else h for h in self.handlers]
        self.url = url
        self.name = name
        self.closing = False
        self.connected = threading.Event()
        self.start_failed = threading.Event()
        self.start_error: str | None = None
        self._ssl_domain = ssl_domain
        self._server_name = server_name
        self._on_state = on_state
        self._on_idle = on_idle
        self._container = Container(self)
        self._container.container_id = f"{name}-{uuid.uuid4().hex[:8]}"
        self._injector = EventInjector()
        self._container.selectable(self._injector)
        self._lock = threading.Lock()
        self._tasks: deque[tuple[Future | None, Callable[..., Any], tuple]] = deque()
        self._touched: dict[str, LinkSpec] = {}
        self._wake_pending = False
        self._stopped = False
        self._conn: Any = None
        self._session: Any = None
        self._senders: OrderedDict[str, LinkSpec] = OrderedDict()
        self._receivers: dict[int, LinkSpec] = {}
        self._by_link: dict[str, LinkSpec] = {}
        self._unsettled: dict[Delivery, tuple[LinkSpec, ProtonMessage]] = {}
        self._ids = itertools.count(1)
        self._ever_connected = False
        self._outage_logged = False
        self._session_lost = False
        self._thread = threading.Thread(target=self._run, name=f"bus-{name}", daemon=True)

    # ---- thread-safe API -------------------------------------------------------------

    def start(self) -> None:
        """Start the proton thread and begin connecting."""
        self._thread.start()
        self.submit(self._on_loop_connect)

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future:
        """Run ``fn(*args)`` on the proton thread; the future holds its result."""
        future: Future = Future()
        self._queue(future, fn, args)
        return future

    def post(self, address: str, message: Message) -> None:
        """Send a message from any thread, in order with other posts and tasks; it becomes a
        proton message on this thread."""
        self._queue(None, self._enqueue, (address, message))

    def _queue(self, future: Future | None, fn: Callable[..., Any], args: tuple) -> None:
        with self._lock:
            if self._stopped:
                raise BusError("the bus is closed")
            self._tasks.append((future, fn, args))
            wake = not self._wake_pending
            self._wake_pending = True
        if wake:
            self._injector.trigger(ApplicationEvent("pcloud_tasks"))

    def stop(self, timeout: float) -> None:
        """Close the connection and end the proton thread (waits up to ``timeout``)."""
        try:
            self.submit(self._on_loop_shutdown)
        except BusError:
            pass
        with self._lock:
            self._stopped = True
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.warning("bus %s: proton thread did not stop within %.1f s", self.name, timeout)

    # ---- tasks (proton thread) -----------------------------------------------------------

    def on_pcloud_tasks(self, event: Any) -> None:
        with self._lock:
            tasks = list(self._tasks)
            self._tasks.clear()
            self._wake_pending = False
        for future, fn, args in tasks:
            if future is None:
                try:
                    fn(*args)
                except Exception:
                    log.exception("bus %s: cannot queue a message", self.name)
                continue
            self._flush_touched()  # what was posted before a task goes out before it runs
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn(*args))
            except BaseException as exc:  # handed to the waiting thread
                future.set_exception(exc)
        self._flush_touched()

    def _flush_touched(self) -> None:
        touched, self._touched = self._touched, {}
        for spec in touched.values():
            self._flush(spec)

    def on_reactor_quiesced(self, event: Any) -> None:
        self._on_idle()

    def _run(self) -> None:
        try:
            self._container.run()
        except Exception:
            log.exception("bus %s: proton thread crashed", self.name)
        finally:
            with self._lock:
                self._stopped = True
                pending = list(self._tasks)
                self._tasks.clear()
            self._on_idle()
            for future, _fn, _args in pending:
                if future is not None and future.set_running_or_notify_cancel():
                    future.set_exception(BusError("the bus is closed"))

    def _on_loop_connect(self) -> None:
        # sni: the name TLS sends and verifies the certificate against (proton's default is
        # the URL's host)
        extra = {"sni": self._server_name} if self._server_name else {}
        self._conn = self._container.connect(
            self.url, reconnect=ResettingBackoff(), heartbeat=HEARTBEAT,
            allowed_mechs="PLAIN", allow_insecure_mechs=True, ssl_domain=self._ssl_domain,
            **extra)

    def _on_loop_shutdown(self, deadline: float | None = None) -> None:
        """Close once the broker has settled what was sent (waiting at most CLOSE_DRAIN s),
        so that a process may publish its last event and exit."""
        now = time.monotonic()
        deadline = now + CLOSE_DRAIN if deadline is None else deadline
        if self.connected.is_set() and now < deadline and self._output_pending():
            self._container.schedule(0.02, _Timer(lambda: self._on_loop_shutdown(deadline)))
            return
        self.closing = True
        if self._conn is not None:
            self._conn.close()
        self._injector.close()
        self._container.stop()

    def send(self, address: str, message: ProtonMessage) -> None:
        """Queue one message to an address and send it as soon as there is credit."""
        spec = self._sender_for(address)
        spec.outbox.append(message)
        self._flush(spec)

    def _enqueue(self, address: str, message: Message) -> None:
        """``send`` without the flush: the task drain flushes each touched link once."""
        spec = self._touched.get(address)
        if spec is None:
            spec = self._touched[address] = self._sender_for(address)
        spec.outbox.append(message.to_proton())

    def _sender_for(self, address: str) -> LinkSpec:
        """The sender link of an address, created or re-attached when needed."""
        spec = self._senders.get(address)
        if spec is None:
            self._evict_idle_senders()
            spec = LinkSpec(address, receiver=False)
            self._senders[address] = spec
        else:
            self._senders.move_to_end(address)
        if not spec.alive():
            self._attach(spec)
        return spec

    def add_receiver(self, address: str, on_message: Callable[[Message], None]) -> int:
        """Start receiving from an address; returns a handle for ``remove_receiver``."""
        handle = next(self._ids)
        spec = LinkSpec(address, receiver=True, on_message=on_message)
        self._receivers[handle] = spec
        self._attach(spec)
        return handle

    def remove_receiver(self, handle: int) -> None:
        """Stop receiving; messages already prefetched are dropped (released by the broker)."""
        spec = self._receivers.pop(handle, None)
        if spec is not None and spec.link is not None:
            self._by_link.pop(spec.link.name, None)
            if spec.alive():
                spec.link.close()

    def is_attached(self, handle: int) -> bool:
        """True when the receiver's link is attached at both ends (useful in tests)."""
        spec = self._receivers.get(handle)
        return bool(spec and spec.alive() and spec.link.state & Endpoint.REMOTE_ACTIVE)

    # ---- links ---------------------------------------------------------------------

    def _attach(self, spec: LinkSpec) -> None:
        if self._conn is None or self.closing:
            return
        if self._session is None or self._session.state & Endpoint.LOCAL_CLOSED:
            self._session = self._conn.session()
            self._session.open()
        if spec.unconfirmed:
            spec.failures += 1
        spec.unconfirmed = True
        name = f"{self._container.container_id}-{next(self._ids)}-{spec.address}"
        if spec.receiver:
            link = self._session.receiver(name)
            link.source.address = spec.address
        else:
            link = self._session.sender(name)
            link.target.address = spec.address
        if spec.link is not None:
            self._by_link.pop(spec.link.name, None)
            if spec.link.state & Endpoint.LOCAL_ACTIVE:
                spec.link.close()
        spec.link = link
        self._by_link[name] = spec
        link.open()

    def _relink(self) -> None:
        """Recreate every link that is locally closed; proton keeps the others itself."""
        if self._conn is None or self.closing:
            return
        for spec in itertools.chain(list(self._senders.values()), list(self._receivers.values())):
            if spec.alive():
                continue
            if not spec.receiver and spec.failures >= MAX_LINK_FAILURES:
                self._give_up_sender(spec)
            else:
                self._attach(spec)

    def _evict_idle_senders(self) -> None:
        """Close the least recently used sender links (e.g. to expired reply queues)."""
        while len(self._senders) >= MAX_IDLE_SENDERS:
            for address, spec in self._senders.items():
                if not spec.outbox and not spec.inflight:
                    del self._senders[address]
                    if spec.link is not None:
                        self._by_link.pop(spec.link.name, None)
                        if spec.alive():
                            spec.link.close()
                    break
            else:
                return

    def _flush(self, spec: LinkSpec) -> None:
        link = spec.link
        if link is None or not self.connected.is_set() or not spec.alive():
            return
        while spec.outbox and link.credit > 0:
            message = spec.outbox.popleft()
            delivery = link.send(message)
            spec.inflight += 1
            self._unsettled[delivery] = (spec, message)

    def _output_pending(self) -> bool:
        return bool(self._unsettled) or any(spec.outbox for spec in self._senders.values())

    def _flush_all(self) -> None:
        for spec in list(self._senders.values()):
            self._flush(spec)

    def _requeue(self, delivery: Delivery) -> None:
        entry = self._unsettled.pop(delivery, None)
        if entry is not None:
            spec, message = entry
            spec.inflight -= 1
            spec.outbox.appendleft(message)

    # ---- proton events -----------------------------------------------------------------

    def on_connection_opened(self, event: Any) -> None:
        first = not self._ever_connected
        self._ever_connected = True
        self._outage_logged = False
        self._session_lost = False
        self.connected.set()
        self._relink()
        self._flush_all()
        log.info("bus %s: %s to %s", self.name, "connected" if first else "reconnected",
                 redact(self.url))
        self._on_state("connected" if first else "reconnected")

    def on_disconnected(self, event: Any) -> None:
        if self.closing:
            return
        self.connected.clear()
        for delivery in reversed(list(self._unsettled)):
            self._requeue(delivery)
            delivery.settle()
        # proton would re-attach these sender links with their old deliveries pending and
        # the broker ends the session on the stale transfer: start them afresh instead.
        for spec in self._senders.values():
            if spec.link is not None:
                self._by_link.pop(spec.link.name, None)
                if spec.link.state & Endpoint.LOCAL_ACTIVE:
                    spec.link.close()
                spec.link = None
        if not self._outage_logged and self._ever_connected:   # at start: the caller says
            log.warning("bus %s: lost the broker connection; reconnecting", self.name)
            self._outage_logged = True
        self._on_state("disconnected")

    def on_transport_error(self, event: Any) -> None:
        cond = event.transport.condition
        text = f"{cond.name}: {cond.description}" if cond else "transport error"
        if self.closing:
            return
        if not self._ever_connected and cond and fatal_at_start(cond):
            self.start_error = text
            self.start_failed.set()
            event.connection.close()
            return
        if not self._ever_connected:
            self.start_error = text
        if not self._outage_logged:
            log.warning("bus %s: %s", self.name, text)
            self._outage_logged = True

    def on_sendable(self, event: Any) -> None:
        spec = self._by_link.get(event.sender.name)
        if spec is not None:
            self._flush(spec)

    def on_accepted(self, event: Any) -> None:
        entry = self._unsettled.pop(event.delivery, None)
        if entry is not None:
            entry[0].inflight -= 1

    def on_rejected(self, event: Any) -> None:
        entry = self._unsettled.pop(event.delivery, None)
        if entry is not None:
            entry[0].inflight -= 1
            cond = event.delivery.remote.condition
            log.error("bus %s: broker rejected a message to %s: %s", self.name,
                      entry[0].address, cond.description if cond else "no reason given")

    def on_released(self, event: Any) -> None:
        self._requeue(event.delivery)
        spec = self._by_link.get(event.link.name)
        if spec is not None:
            self._container.schedule(RELINK_DELAY, _Timer(lambda: self._flush(spec)))

    def on_settled(self, event: Any) -> None:
        entry = self._unsettled.pop(event.delivery, None)
        if entry is not None:
            entry[0].inflight -= 1

    def on_message(self, event: Any) -> None:
        spec = self._by_link.get(event.receiver.name)
        if spec is None or spec.on_message is None:
            return
        spec.on_message(Message.from_proton(event.message, spec.address,
                                            getattr(event, "encoded", None)))

    def _link_lost(self, what: str, endpoint: Any) -> None:
        if self.closing:
            return
        cond = endpoint.remote_condition
        log.warning("bus %s: broker ended a %s (%s); recreating it", self.name, what,
                    f"{cond.name}: {cond.description}" if cond else "no error given")
        if what == "session" and self.connected.is_set():
            # Every link lived on that session: until they are back nothing arrives, and a
            # watcher must not take that for its peers' silence. (A broker stopping cleanly
            # ends the sessions seconds before it closes the connection.)
            self._session_lost = True
            self.connected.clear()
            self._on_state("disconnected")
        self._container.schedule(RELINK_DELAY, _Timer(self._relink_and_flush))

    def _relink_and_flush(self) -> None:
        self._relink()
        self._flush_all()

    def on_link_error(self, event: Any) -> None:
        self._link_lost("link", event.link)

    def on_link_opened(self, event: Any) -> None:
        spec = self._by_link.get(event.link.name)
        if spec is not None and (spec.receiver or event.link.remote_target.address):
            spec.unconfirmed = False  # the broker attached it (a refusal has no target)
            spec.failures = 0
        if self._session_lost and all(s.alive() for s in self._receivers.values()):
            self._session_lost = False   # the links are back on a new session
            self.connected.set()
            self._flush_all()
            log.info("bus %s: links recreated after the broker ended a session", self.name)
            self._on_state("reconnected")

    def _give_up_sender(self, spec: LinkSpec) -> None:
        """Forget a sender whose address the broker keeps refusing, with what it holds."""
        lost = [d for d, (owner, _m) in self._unsettled.items() if owner is spec]
        for delivery in lost:
            del self._unsettled[delivery]
        dropped = len(spec.outbox) + len(lost)
        spec.outbox.clear()
        spec.inflight = 0
        if self._senders.get(spec.address) is spec:
            del self._senders[spec.address]
        if self._touched.get(spec.address) is spec:
            del self._touched[spec.address]
        if spec.link is not None:
            self._by_link.pop(spec.link.name, None)
            if spec.link.state & Endpoint.LOCAL_ACTIVE:
                spec.link.close()
        log.error("bus %s: the broker did not attach a sender link to %r in %d attempts; "
                  "giving up: dropped %d message(s) to it", self.name, spec.address,
                  spec.failures, dropped)

    def on_link_closing(self, event: Any) -> None:
        if event.link.name in self._by_link:
            self._link_lost("link", event.link)

    def on_session_error(self, event: Any) -> None:
        self._link_lost("session", event.session)

    def on_session_closing(self, event: Any) -> None:
        self._link_lost("session", event.session)

    def on_connection_error(self, event: Any) -> None:
        EndpointStateHandler.print_error(event.connection, "connection")
