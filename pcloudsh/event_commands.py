"""``events``: the stored history of a deployable's events and the live ones, one line each.

Events travel on one topic per component (``pcloud.event.<dep>.<asm>.<rsc>``), so the broker
may hand two of them over out of order; ``SeqOrder`` holds a live event back briefly when its
predecessor (by ``seq``, per deployable) has not been shown yet, so the display reads in the
order things happened.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from typing import Any

from lxml import etree

from pcloud import xmlsafe
from pcloud.bus import Message
from pcloud.events import Event, EventType
from pcloudsh import display
from pcloudsh.commands import CommandError, Commands, check_deployable_name, command

USAGE = ("events [<deployable>] [--type TYPE] [--since SEQ [--follow]] [--count N] "
         "[--timeout S]")
EVENT_TYPES = tuple(t.value for t in EventType)
#: Attributes that stay text in JSON even when they look like numbers (names can be digits).
TEXT_ATTRIBUTES = frozenset({"deployable", "assembly", "resource", "type", "time", "state",
                             "reason", "previous", "escalated_to", "escalated_from",
                             "incident"})
NUMBER_RE = re.compile(r"^-?\d+(\.\d+)?$")
HISTORY_PAGE = 1000


def event_json(element: etree._Element) -> dict[str, Any]:
    """An event's attributes for ``--json``: numbers as numbers, the rest as text."""
    out: dict[str, Any] = {}
    for key, value in element.attrib.items():
        if key not in TEXT_ATTRIBUTES and NUMBER_RE.match(value):
            out[key] = float(value) if "." in value else int(value)
        else:
            out[key] = value
    return out


class SeqOrder:
    """Shows live events in ``seq`` order per deployable, waiting at most ``hold`` seconds.

    Feed it every event of a deployable and filter when showing: a filtered-out event would
    leave a gap that holds the next one back.

    An event whose predecessor was shown goes out at once; another one waits until the gap
    fills or ``hold`` passes (the predecessor may have been filtered out or lost).
    """

    def __init__(self, emit: Callable[[Event, etree._Element], None], hold: float = 0.3
                 ) -> None:
        self._emit = emit
        self._hold = hold
        self._lock = threading.Lock()
        self._held: dict[str, list[tuple[int, float, Event, etree._Element]]] = {}
        self._last: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._tick, name="pcloudsh-seq-order",
                                        daemon=True)
        self._thread.start()

    def add(self, event: Event, element: etree._Element) -> None:
        with self._lock:
            if event.seq is None:
                self._emit(event, element)
                return
            held = self._held.setdefault(event.deployable, [])
            held.append((event.seq, time.monotonic(), event, element))
            held.sort(key=lambda item: item[0])
            self._release(event.deployable, time.monotonic())

    def close(self) -> None:
        """Show whatever is still held, in order, and stop the timer."""
        self._stop.set()
        with self._lock:
            for deployable in list(self._held):
                self._release(deployable, float("inf"))

    def _tick(self) -> None:
        while not self._stop.wait(0.05):
            with self._lock:
                for deployable in list(self._held):
                    self._release(deployable, time.monotonic())

    def _release(self, deployable: str, now: float) -> None:
        held = self._held[deployable]
        while held:
            seq, arrived, event, element = held[0]
            last = self._last.get(deployable)
            if not (last is not None and seq <= last + 1 or arrived + self._hold <= now):
                break
            held.pop(0)
            self._last[deployable] = seq if last is None else max(last, seq)
            self._emit(event, element)


def _options(args: list[str]) -> dict[str, Any]:
    options: dict[str, Any] = {"deployable": None, "type": None, "since": None,
                               "follow": False, "count": None, "timeout": None}
    rest = list(args)
    try:
        while rest:
            word = rest.pop(0)
            if word == "--type":
                options["type"] = rest.pop(0)
            elif word == "--since":
                options["since"] = int(rest.pop(0))
            elif word == "--follow":
                options["follow"] = True
            elif word == "--count":
                options["count"] = int(rest.pop(0))
            elif word == "--timeout":
                options["timeout"] = float(rest.pop(0))
            elif not word.startswith("-") and options["deployable"] is None:
                options["deployable"] = word
            else:
                raise CommandError(f"unexpected {word!r}; usage: {USAGE}")
    except (IndexError, ValueError):
        raise CommandError(f"usage: {USAGE}") from None
    if options["type"] is not None and options["type"] not in EVENT_TYPES:
        raise CommandError(f"unknown event type {options['type']!r}; the types are "
                           f"{', '.join(EVENT_TYPES)}")
    if options["count"] is not None and options["count"] < 1:
        raise CommandError("--count must be 1 or more")
    if options["since"] is not None and options["since"] < 0:
        raise CommandError("--since must be 0 or more")
    return options


def _check_deployable(self: Commands, name: str) -> None:
    """Refuse a name no one knows, rather than wait for events that cannot come."""
    check_deployable_name(name)
    if name in self.catalogue.deployables() or name in self.cpe_states():
        return
    raise CommandError(f"no deployable named {name!r}: the CPE has never started one and "
                       "the catalogue has none")


@command("[<deployable>] [--type TYPE] [--since SEQ [--follow]] [--count N] [--timeout S]",
         "deployable")
def cmd_events(self: Commands, args: list[str]) -> None:
    """Show events as they happen (Ctrl-C ends); --since SEQ shows the stored history."""
    options = _options(args)
    name, wanted, count = options["deployable"], options["type"], options["count"]
    if name:
        _check_deployable(self, name)
    if options["since"] is not None:
        shown = _history(self, name, wanted, options["since"], count)
        if not options["follow"] or (count is not None and shown >= count):
            return
        if count is not None:
            count -= shown
    _follow(self, name, wanted, count, options["timeout"])


def _history(self: Commands, name: str | None, wanted: str | None, since: int,
             count: int | None) -> int:
    """Print the stored events after ``since`` (oldest first); how many were printed."""
    query = etree.Element("events", since_seq=str(since), limit=str(HISTORY_PAGE))
    if name:
        query.set("deployable", name)
    history = self.cpe("events_query", query)
    elements = [e for e in (history if history is not None else [])
                if not wanted or e.get("type") == wanted]
    if count is not None:
        elements = elements[:count]
    if self.json:
        self.say(display.as_json([event_json(e) for e in elements]))
    else:
        lines = [line for line in map(_line, elements) if line]
        for line in lines:
            self.say(line)
        if not lines:
            self.say(f"(no events{' of ' + name if name else ''} after seq {since})")
    return len(elements)


def _line(element: etree._Element) -> str | None:
    try:
        return Event.from_xml(element, source="event").describe(local_time=True)
    except xmlsafe.XMLError:
        return None


def _follow(self: Commands, name: str | None, wanted: str | None, count: int | None,
            timeout: float | None) -> None:
    """Print live events until Ctrl-C, ``count`` events or ``timeout`` seconds."""
    done = threading.Event()
    seen = [0]

    def show(event: Event, element: etree._Element) -> None:
        if done.is_set() or (wanted and event.type.value != wanted):
            return
        self.say(display.as_json(event_json(element)) if self.json
                 else event.describe(local_time=True))
        seen[0] += 1
        if count is not None and seen[0] >= count:
            done.set()

    order = SeqOrder(show)

    def on_event(msg: Message) -> None:
        try:
            element = xmlsafe.parse(msg.body, source="event")
            event = Event.from_xml(element, source="event")
        except xmlsafe.XMLError:
            return
        order.add(event, element)

    sub = self.bus().subscribe(f"pcloud.event.{name}.#" if name else "pcloud.event.#",
                               on_event)
    sub.wait_attached(timeout=10.0)
    if not self.json:
        self.say(f"(watching events{' of ' + name if name else ''}; Ctrl-C to stop)")
    deadline = None if timeout is None else time.monotonic() + timeout
    try:
        while not done.wait(0.2):
            if deadline is not None and time.monotonic() > deadline:
                break
    except KeyboardInterrupt:
        self.say("")
    finally:
        sub.cancel()
        order.close()
