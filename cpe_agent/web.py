"""The read-only web console (docs/console.md): a page for the people on call.

It reads only the public contract, as any other client would: ``deployables_list``,
``deployable_status`` and ``events_query`` on ``pcloud.cpe`` and the events on
``pcloud.event.#``, over a broker connection of its own with the observer role (a login the
CPE mints for it at every start, whose password lives only in this process's memory). What it
sees is folded by :mod:`cpe_agent.web_model` and pushed to the browsers as Server-Sent
Events; the page draws it, and the MTTR plot with uPlot (vendored in ``web_static/``, MIT).

Off by default; ``[web] listen = 127.0.0.1:8480`` in the CPE's config switches it on. It
serves GET only, on a local address unless told otherwise: put a proxy with authentication
in front of it to show it further.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp import web
from lxml import etree

from cpe_agent.web_model import ConsoleModel
from pcloud import identity, schemas, xmlsafe
from pcloud.bus import Backoff, Bus, BusError, Message, MethodError, connect
from pcloud.credentials import with_credentials

log = logging.getLogger("pcloud.cpe.web")

STATIC = Path(__file__).with_name("web_static")
CPE_QUEUE = "pcloud.cpe"
CALL_TIMEOUT = 10.0
FULL_REFRESH = 5.0        # seconds between full listings (new deployables, missed changes)
COALESCE = 0.2            # seconds a burst of events is gathered before statuses are asked
HISTORY_PAGE = 1000
HISTORY_PAGES = 20        # per deployable at start: the newest incidents reach the plot
CLIENT_QUEUE = 1000       # messages a slow browser may lag behind before it is dropped
KEEPALIVE = 15.0
CONSOLE_USER = "pcloud-console"
RETRY_LOGIN = 5.0         # seconds between tries to create the console's login
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; style-src 'self' 'unsafe-inline'; "
                               "img-src 'self' data:; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}

Publish = Callable[[dict[str, Any]], None]


class ConsoleFeed:
    """pcloud as an observer sees it: the model, kept current from the bus."""

    def __init__(self, url: str, cpe_user: str, publish: Publish) -> None:
        self.url = url
        self.cpe_user = cpe_user
        self.publish = publish
        self.model = ConsoleModel()
        self.lock = threading.Lock()
        self.bus: Bus | None = None
        self._dirty: set[str] = set()
        self._wake = threading.Event()
        self._catch_up = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="web-feed", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop at once: the connection first, so a call in flight ends now rather than at
        its timeout (cped's shutdown waits for this)."""
        self._stop.set()
        self._wake.set()
        if self.bus is not None:
            self.bus.close()
        if self._thread is not None:
            self._thread.join(timeout=5.0)

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            return self.model.snapshot()

    def _run(self) -> None:
        try:
            self.bus = connect(lambda: Bus(self.url, name="pcloud-web"), self._stop,
                               backoff=Backoff(first=0.5, cap=10.0))
        except BusError as exc:
            log.error("web console: no broker connection: %s", exc)
            return
        if self.bus is None:
            return
        if self._stop.is_set():             # closed while connecting
            self.bus.close()
            return
        self.bus.subscribe("pcloud.event.#", self._on_event).wait_attached(CALL_TIMEOUT)
        self.bus.on_reconnect(self._reconnected)
        if not self._refresh_all(history=True):
            self._catch_up.set()       # the CPE's queue is not served yet: at the next turn
        while not self._stop.is_set():
            woken = self._wake.wait(FULL_REFRESH)
            if self._stop.is_set():
                return
            if self._catch_up.is_set():
                self._catch_up.clear()
                self._wake.clear()
                if not self._refresh_all(history=True):
                    self._catch_up.set()          # tried again at the next full refresh
            elif woken:
                self._stop.wait(COALESCE)
                self._wake.clear()
                with self.lock:
                    names, self._dirty = self._dirty, set()
                for name in sorted(names):
                    self._refresh(name)
            else:
                self._refresh_all(history=False)

    def _reconnected(self) -> None:
        """Events published while the connection was down are read from the history."""
        self._catch_up.set()
        self._wake.set()

    def _call(self, method: str, body: str) -> etree._Element | None:
        assert self.bus is not None
        return self.bus.call(CPE_QUEUE, method, body, timeout=CALL_TIMEOUT,
                             senders={self.cpe_user})

    def _refresh_all(self, history: bool) -> bool:
        """The listing: deployables new or gone, and any whose state differs from what the
        events said (a status each). With ``history`` (at start and after a reconnect): the
        events missed, then every deployable's status. False when the CPE did not answer."""
        try:
            listing = self._call("deployables_list", "<deployables/>")
        except (BusError, MethodError) as exc:
            log.info("web console: deployables_list failed: %s", exc)
            return False
        states = {d.get("name", ""): d.get("state", "")
                  for d in (listing if listing is not None else [])}
        with self.lock:
            gone = self.model.forget_missing(set(states))
            known = {name: status["state"] for name, status in self.model.deployables.items()}
        for name in gone:
            self.publish({"kind": "gone", "name": name})
        if history:
            for name in sorted(states):
                self._history(name)
            self.publish({"kind": "snapshot", **self.snapshot()})
        for name in sorted(states):
            if history or known.get(name) != states[name]:
                self._refresh(name)
        return True

    def _refresh(self, name: str) -> None:
        try:
            root = self._call("deployable_status",
                              etree.tostring(etree.Element("deployable", name=name),
                                             encoding="unicode"))
        except (BusError, MethodError) as exc:
            log.info("web console: deployable_status of %s failed: %s", name, exc)
            return
        if root is None or root.tag != "deployable":
            return
        with self.lock:
            status = self.model.set_status(root)
        self.publish({"kind": "status", "deployable": status})

    def _history(self, name: str) -> None:
        """The stored events of ``name`` after the last one seen: all of them at start (the
        incidents and MTTR points of the past), what was missed after a reconnect."""
        with self.lock:
            since = self.model.last_seq.get(name, 0)
        for _ in range(HISTORY_PAGES):
            query = etree.Element("events", deployable=name, since_seq=str(since),
                                  limit=str(HISTORY_PAGE))
            try:
                result = self._call("events_query", etree.tostring(query, encoding="unicode"))
            except (BusError, MethodError) as exc:
                log.info("web console: events_query of %s failed: %s", name, exc)
                return
            events = [] if result is None else list(result.iter("event"))
            with self.lock:        # quietly: one snapshot follows, not an event each
                for element in events:
                    self.model.fold(dict(element.attrib))
            if len(events) < HISTORY_PAGE:
                return
            since = max(int(e.get("seq", "0")) for e in events)

    def _on_event(self, msg: Message) -> None:
        """An event from the bus, if its sender may send it (the deployable's DPE or the
        CPE) and it is a valid event document."""
        try:
            root = xmlsafe.parse(msg.body, source="event")
            schemas.validate(root, "event")
        except xmlsafe.XMLError as exc:
            log.info("web console: dropped an invalid event from %s: %s", msg.user_id, exc)
            return
        name = root.get("deployable", "")
        if msg.user_id not in (identity.dpe_user(name), self.cpe_user):
            log.info("web console: dropped an event of %r from %r", name, msg.user_id)
            return
        if self._take(dict(root.attrib)):
            with self.lock:
                self._dirty.add(name)
            self._wake.set()

    def _take(self, event: dict[str, str]) -> bool:
        """Fold one event and tell the browsers; False when it was seen already."""
        with self.lock:
            changed = self.model.fold(event)
        if changed is None:
            return False
        self.publish({"kind": "event", "event": event})
        for incident in changed:
            self.publish({"kind": "incident", "incident": incident.to_json()})
        return True


class ConsoleServer:
    """The HTTP side: the page, its files, a JSON snapshot and the SSE stream (aiohttp, on
    an event loop of its own in one thread)."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.feed: ConsoleFeed | None = None
        self._clients: set[asyncio.Queue[dict[str, Any] | None]] = set()
        self._loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._serve, name="web", daemon=True)

    def start(self, timeout: float = 10.0) -> None:
        """Listen; OSError (e.g. the port is taken) is raised here."""
        self._thread.start()
        self._ready.wait(timeout)
        if self._error is not None:
            raise self._error
        log.info("web console on http://%s:%d/", self.host, self.port)

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._open())
        except BaseException as exc:      # handed to start()
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        self._loop.run_forever()

    async def _open(self) -> None:
        app = web.Application(middlewares=[_guard])
        app.router.add_get("/", self._index)
        app.router.add_get("/api/state", self._state)
        app.router.add_get("/api/stream", self._stream)
        app.router.add_static("/static/", STATIC, follow_symlinks=False)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        server = site._server
        if server is not None and server.sockets:
            self.port = server.sockets[0].getsockname()[1]

    def close(self) -> None:
        if not self._thread.is_alive():
            return
        self._loop.call_soon_threadsafe(self._hang_up)
        if self._runner is not None:
            future = asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop)
            try:
                future.result(timeout=10.0)
            except Exception as exc:
                log.info("web console: shutdown: %s", exc)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10.0)
        self._loop.close()

    def publish(self, message: dict[str, Any]) -> None:
        """Send to every browser (any thread)."""
        if not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._fan_out, message)

    def _fan_out(self, message: dict[str, Any] | None) -> None:
        for queue in list(self._clients):
            if queue.qsize() >= CLIENT_QUEUE:
                self._clients.discard(queue)      # too slow: it reconnects and resyncs
                queue.put_nowait(None)
            else:
                queue.put_nowait(message)

    def _hang_up(self) -> None:
        for queue in list(self._clients):
            queue.put_nowait(None)
        self._clients.clear()

    async def _index(self, request: web.Request) -> web.StreamResponse:
        return web.FileResponse(STATIC / "index.html")

    async def _state(self, request: web.Request) -> web.Response:
        return web.json_response(self._snapshot())

    def _snapshot(self) -> dict[str, Any]:
        return self.feed.snapshot() if self.feed is not None else {
            "deployables": [], "events": [], "incidents": []}

    async def _stream(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                               "Cache-Control": "no-cache"})
        await response.prepare(request)
        queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self._clients.add(queue)
        try:
            await response.write(_sse({"kind": "snapshot", **self._snapshot()}))
            while True:
                try:
                    message = await asyncio.wait_for(queue.get(), KEEPALIVE)
                except TimeoutError:
                    await response.write(b": keepalive\n\n")
                    continue
                if message is None:
                    break
                await response.write(_sse(message))
        except ConnectionError:
            pass                                  # the browser went away
        finally:
            self._clients.discard(queue)
        return response


@web.middleware
async def _guard(request: web.Request, handler) -> web.StreamResponse:
    """Only names that cannot be rebound: an IP literal or localhost (a page of another
    site that points its own name at 127.0.0.1 gets nothing), and no framing or outside
    scripts in what is served."""
    if not _local_host(request.url.host or ""):
        return web.Response(status=421, text="this console answers only to an IP address or "
                                             "localhost in the Host header\n")
    response = await handler(request)
    response.headers.update(SECURITY_HEADERS)
    return response


def _local_host(name: str) -> bool:
    if name == "localhost":
        return True
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def _sse(message: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(message, separators=(',', ':'))}\n\n".encode()


class Console:
    """The console as cped runs it: an observer login, the feed and the server."""

    def __init__(self, host: str, port: int, broker_url: str, cpe_user: str, admin,
                 login: str = CONSOLE_USER) -> None:
        self.server = ConsoleServer(host, port)
        self.broker_url = broker_url
        self.cpe_user = cpe_user
        self.admin = admin
        self.login = login
        self.feed: ConsoleFeed | None = None
        self._stop = threading.Event()
        self._starter: threading.Thread | None = None

    def start(self) -> None:
        """Listen at once (a taken port is an error now); the observer login and the bus
        connection follow in the background, so cped's start never waits for them."""
        self.server.start()
        self._starter = threading.Thread(target=self._start_feed, name="web-start",
                                         daemon=True)
        self._starter.start()

    def _start_feed(self) -> None:
        """A fresh password for the console's observer login at every start (the broker
        may be down for a while: tried again until it takes it)."""
        spec = identity.client_spec(self.login, "observer")
        while not self._stop.is_set():
            try:
                self.admin.put_users([spec])
                break
            except Exception as exc:
                log.warning("web console: cannot set its observer login %s yet: %s",
                            self.login, exc)
                self._stop.wait(RETRY_LOGIN)
        if self._stop.is_set():
            return
        feed = ConsoleFeed(with_credentials(self.broker_url, spec.credentials), self.cpe_user,
                           self.server.publish)
        self.feed = self.server.feed = feed
        feed.start()

    def close(self) -> None:
        self._stop.set()
        if self._starter is not None:
            self._starter.join(timeout=30.0)
        if self.feed is not None:
            self.feed.close()
        self.server.close()
