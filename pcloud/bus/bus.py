"""The public Bus: thread-safe messaging, method calls and subscriptions for one process.

See docs/architecture.md. All protocol work happens on the EventLoop's proton thread;
subscription and reconnect callbacks run on the Dispatcher thread, method handlers on the
pool of their served queue (``Lanes``); this module only glues them to the callers.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import urllib.parse
from collections.abc import Callable, Collection, Mapping
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

from proton import SSLDomain

from pcloud import protocol
from pcloud.bus.addressing import RabbitMQProfile, profile_for
from pcloud.bus.dedup import RecentIds
from pcloud.bus.dispatcher import Dispatcher
from pcloud.bus.errors import BusAuthError, BusError, BusTimeout, BusTLSError, BusUnreachable
from pcloud.bus.eventloop import EventLoop
from pcloud.bus.message import Message, new_id
from pcloud.bus.recovery import redact
from pcloud.bus.rpc import Waiters
from pcloud.bus.server import Authorize, Handler, RequestServer, SerialKey

log = logging.getLogger("pcloud.bus")

CLOSE_TIMEOUT = 5.0


class Subscription:
    """A receiver created by ``subscribe``, ``consume`` or ``serve``; ``cancel()`` ends it."""

    def __init__(self, bus: Bus, handle: int, address: str,
                 server: RequestServer | None = None) -> None:
        self._bus = bus
        self.handle = handle
        self.address = address
        self._server = server

    def cancel(self) -> None:
        """Detach; a served queue's handlers finish what they already took, then stop."""
        self._bus._cancel(self.handle)
        if self._server is not None:
            self._bus._servers.discard(self._server)
            self._server.lanes.shutdown()

    def attached(self) -> bool:
        """True once the broker has attached the link (tests wait on this)."""
        return self._bus._attached(self.handle)

    def wait_attached(self, timeout: float = 10.0) -> bool:
        """Wait until the broker attached the link, so nothing published after is missed."""
        deadline = threading.Event()
        for _ in range(int(timeout / 0.02)):
            if self.attached():
                return True
            deadline.wait(0.02)
        return self.attached()


def login_of(url: str) -> str | None:
    """The broker user named in a URL (what the broker will check ``user_id`` against)."""
    user = urllib.parse.urlsplit(url).username
    return urllib.parse.unquote(user) if user else None


class Bus:
    """One connection to the broker, shared by all threads of a process.

    Every message it sends carries ``user_id`` = its login. Messages received without a
    ``user_id`` are dropped (logged once per address): nobody could say who sent them. The
    reply queue of ``call`` is attached on the first call, so a party that never calls needs
    no permission for one; ``reply_topic_key`` makes replies come on that topic key instead
    (a DPE, whose agents may publish only on topic keys of their own).
    """

    def __init__(self, url: str | None = None, name: str | None = None,
                 profile: RabbitMQProfile | None = None,
                 ssl_domain: SSLDomain | None = None,
                 reply_topic_key: str | None = None,
                 server_name: str | None = None) -> None:
        if url is None:
            from pcloud.config import broker_url
            url = broker_url()
        self.url = url
        self.user = login_of(url)
        self.name = name or f"pcloud-{os.getpid()}"
        self.profile = profile or profile_for()
        if ssl_domain is None and url.startswith("amqps://"):
            from pcloud.bus.tls import client_domain
            from pcloud.config import tls_options
            options = tls_options()
            ssl_domain = client_domain(options)
            server_name = server_name or options.server_name
        self._ssl_domain = ssl_domain
        self._server_name = server_name      # the certificate's name, if not the URL's host
        self._loop: EventLoop | None = None
        self._dispatcher = Dispatcher(self.name)
        self._waiters = Waiters()
        self._reply_queue = (self.profile.reply_topic(reply_topic_key) if reply_topic_key
                             else self.profile.new_reply_queue())
        self._replies: Subscription | None = None
        self._replies_lock = threading.Lock()
        self._anonymous = RecentIds(256)
        self._reconnect_callbacks: list[Callable[[], None]] = []
        self._servers: set[RequestServer] = set()
        self._closed = False

    # ---- lifecycle -----------------------------------------------------------------

    def start(self, timeout: float = 10.0) -> Bus:
        """Connect; BusError on bad credentials (at once) or no connection within timeout."""
        if self._loop is not None:
            raise BusError("bus already started")
        self._loop = EventLoop(self.url, self.name, self._ssl_domain, self._on_state,
                               self._dispatcher.flush, server_name=self._server_name)
        self._dispatcher.start()
        self._loop.start()
        step = 0.01
        remaining = timeout
        while remaining > 0:
            if self._loop.connected.wait(step):
                return self
            if self._loop.start_failed.is_set():
                break
            remaining -= step
            step = min(step * 2, 0.1)
        error = self._loop.start_error or "no answer"
        self.close()
        if "certificate verify failed" in error:
            raise BusTLSError(f"TLS: the certificate of broker {redact(self.url)} is not "
                              f"trusted or does not name that host ({error})")
        if "Expected SASL protocol header" in error:
            raise BusUnreachable(f"broker {redact(self.url)} does not speak AMQP 1.0 (a "
                                 "RabbitMQ without its rabbitmq_amqp1_0 plugin? pcloud's own "
                                 "broker is 'pcloud-broker start')")
        if "unauthorized" in error or "SASL" in error:
            raise BusAuthError(f"broker {redact(self.url)} refused the credentials ({error})")
        raise BusUnreachable(f"cannot connect to broker {redact(self.url)} within "
                             f"{timeout:g} s ({error})")

    def close(self) -> None:
        """Close the connection and end the threads; pending calls fail with BusError,
        queued requests are dropped (their callers resend them to the next server)."""
        if self._closed:
            return
        self._closed = True
        self._waiters.fail_all(BusError("the bus was closed"))
        for server in list(self._servers):
            server.lanes.shutdown(cancel_pending=True)
        if self._loop is not None:
            self._loop.stop(CLOSE_TIMEOUT)
        self._dispatcher.stop(CLOSE_TIMEOUT)
        for server in list(self._servers):
            server.lanes.shutdown(cancel_pending=True, timeout=CLOSE_TIMEOUT)

    def __enter__(self) -> Bus:
        return self.start() if self._loop is None else self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def connected(self) -> bool:
        return bool(self._loop and self._loop.connected.is_set())

    def lag_probe(self) -> Future:
        """A future that the bus thread completes once it has worked through everything
        queued before it (incoming messages included): with the time it was asked, the
        thread's lag. A backlogged bus thread delays heartbeats no agent failed to send."""
        return self._running().submit(time.monotonic)

    def on_reconnect(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` on the dispatcher thread after each reconnect."""
        self._reconnect_callbacks.append(callback)

    # ---- sending -------------------------------------------------------------------

    def send(self, queue: str, message: Message) -> None:
        """Send to a queue; returns at once, delivery is retried across reconnects."""
        self._send_to(self.profile.queue(queue), message)

    def publish(self, topic_key: str, message: Message) -> None:
        """Publish on a topic key (e.g. ``pcloud.event.dep1.web.httpd``)."""
        self._send_to(self.profile.topic(topic_key), message)

    def call(self, queue: str, method: str, body: Any = "", timeout: float = 10.0,
             properties: Mapping[str, Any] | None = None,
             senders: Collection[str] | None = None):
        """Call a method and return the result element of the response (or None).

        Raises MethodError for an error response, BusTimeout when no response in time.
        Any thread may call, including handlers and callbacks of this Bus; a handler calling
        a method of its own queue needs a free worker there (``workers`` > 1). ``senders``:
        the broker logins whose answer counts (anyone's with a ``user_id`` by default).
        """
        address = self.profile.queue(queue)
        self._attach_replies()
        correlation_id = new_id()
        request = Message(body=body, subject=method, opcode="method_request",
                          reply_to=self._reply_queue, correlation_id=correlation_id,
                          properties=dict(properties or {}))
        future = self._waiters.add(correlation_id, address, request, senders)
        try:
            self._send_to(address, request)
            response = future.result(timeout)
        except FutureTimeout:
            raise BusTimeout(f"no response to {method!r} from queue {queue!r} within "
                             f"{timeout:g} s (is its server running?)") from None
        finally:
            self._waiters.remove(correlation_id)
        return protocol.parse_response(response.body)

    def _attach_replies(self) -> None:
        """Attach the reply receiver on the first call; every caller waits until the broker
        attached it (a topic reply sent before the binding exists would be lost)."""
        with self._replies_lock:
            if self._replies is None:
                loop = self._running()
                handle = loop.submit(loop.add_receiver, self._reply_queue,
                                     self._waiters.resolve).result(CLOSE_TIMEOUT)
                self._replies = Subscription(self, handle, self._reply_queue)
                self._replies.wait_attached(CLOSE_TIMEOUT)

    def _send_to(self, address: str, message: Message) -> None:
        message.user_id = self.user
        self._running().post(address, message)

    # ---- receiving -----------------------------------------------------------------

    def subscribe(self, topic_key: str, callback: Callable[[Message], None]) -> Subscription:
        """Receive events/heartbeats matching a key with ``*``/``#``; duplicates dropped."""
        return self._receive(self.profile.topic(topic_key), callback)

    def consume(self, queue: str, callback: Callable[[Message], None]) -> Subscription:
        """Receive from a shared queue (competing consumers); duplicates dropped."""
        return self._receive(self.profile.queue(queue), callback)

    def serve(self, queue: str, handlers: Mapping[str, Handler], *, workers: int = 1,
              serial_key: SerialKey | None = None,
              authorize: Authorize | None = None,
              reply_prefix: str | None = None) -> Subscription:
        """Answer method requests on a queue with ``handlers[subject](body, msg)``.

        Handlers run on a pool of ``workers`` threads of this queue's own, so they never
        wait for other queues or subscriptions. ``workers=1`` answers in arrival order.
        ``serial_key(method, body, msg)`` (cheap; runs on the proton thread) names what a
        request works on: requests with the same key run one at a time in arrival order,
        different keys (or ``None``) concurrently. ``authorize(method, msg)`` returns why the
        request's sender (``msg.user_id``) may not call ``method``, or None. ``reply_prefix``:
        the only reply addresses this server can write to (a guest agent: its DPE's reply
        topic); a request asking for an answer elsewhere is dropped unanswered, since sending
        there would only make the broker end this party's session.
        """
        profile_ok = self.profile.is_reply_address

        def reply_ok(address: str) -> bool:
            return profile_ok(address) and (reply_prefix is None
                                            or address.startswith(reply_prefix))

        server = RequestServer(queue, handlers, self._reply, workers=workers,
                               serial_key=serial_key, reply_ok=reply_ok, authorize=authorize)
        loop = self._running()
        handle = loop.submit(loop.add_receiver, self.profile.queue(queue),
                             server.accept).result(CLOSE_TIMEOUT)
        self._servers.add(server)
        return Subscription(self, handle, self.profile.queue(queue), server)

    def _receive(self, address: str, callback: Callable[[Message], None]) -> Subscription:
        loop = self._running()
        recent = RecentIds()
        defer = self._dispatcher.defer

        anonymous = self._anonymous

        def on_message(message: Message) -> None:
            if not message.user_id:
                if not anonymous.seen(address):
                    log.warning("dropping a message without user_id on %s (subject %s); "
                                "further ones there are dropped silently", address,
                                message.subject)
                return
            if recent.seen(message.id):
                log.debug("dropping duplicate message %s on %s", message.id, address)
                return
            defer(callback, message)

        handle = loop.submit(loop.add_receiver, address, on_message).result(CLOSE_TIMEOUT)
        return Subscription(self, handle, address)

    def _reply(self, reply_to: str, response: Message) -> None:
        response.user_id = self.user
        self._running().post(reply_to, response)

    def _cancel(self, handle: int) -> None:
        if self._loop is not None and not self._closed:
            self._loop.submit(self._loop.remove_receiver, handle).result(CLOSE_TIMEOUT)

    def _attached(self, handle: int) -> bool:
        loop = self._running()
        return bool(loop.submit(loop.is_attached, handle).result(CLOSE_TIMEOUT))

    def _running(self) -> EventLoop:
        if self._loop is None:
            raise BusError("the bus is not started: call start() first")
        if self._closed:
            raise BusError("the bus is closed")
        return self._loop

    # ---- proton thread hooks -------------------------------------------------------

    def _on_state(self, state: str) -> None:
        """Runs on the proton thread: resend pending calls, then tell the application."""
        if state != "reconnected" or self._loop is None:
            return
        for address, request in self._waiters.pending_requests():
            self._loop.send(address, request.to_proton())
        for callback in self._reconnect_callbacks:
            self._dispatcher.defer(callback)
