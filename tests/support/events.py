"""The one collector: what arrives on a topic, with its arrival time; waits have deadlines.

:class:`Collector` keeps items in arrival order from any thread (a bus subscription's
callback adds them) or pulls them itself (a client with a blocking receive, see ``pull``).
``wait(match, timeout, what)`` returns the first match, ``none_within(match, seconds)``
checks that none comes; deadlines scale to the host's pace (:mod:`support.waiting`), the
observation window of ``none_within`` does not (a longer look is only stricter).

:class:`Events` is the collector of one deployable's events (``pcloud.event.<dep>.#``) with
matching by field (``type``, ``assembly``, ``resource``, ``state``, ``after`` a seq, any other
attribute); :class:`Heartbeats` collects the heartbeats of one assembly.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from lxml import etree

from pcloud.bus import Bus
from pcloud.events import Event
from support.waiting import scaled, timed_out

T = TypeVar("T")
R = TypeVar("R")


def xml_body(msg: Any) -> etree._Element:
    """A message body as XML: a data section (bytes, what pcloud sends) or a string."""
    body = msg.body if hasattr(msg, "body") else msg
    return etree.fromstring(body.encode() if isinstance(body, str) else bytes(body))


class Collector(Generic[T]):
    """Items in arrival order, each with its arrival time (``time.monotonic()``).

    ``parse`` turns a received message into an item (``collector(msg)`` is the callback a
    subscription wants); ``order`` sorts what ``snapshot`` and ``find`` return (arrival order
    without it); ``pull(seconds)``, when given, receives for at most that long and hands what
    it got to ``add``: the waits call it instead of sleeping.
    """

    def __init__(self, parse: Callable[[Any], T] = lambda msg: msg,
                 order: Callable[[T], Any] | None = None,
                 pull: Callable[[float], None] | None = None) -> None:
        self.arrivals: list[tuple[float, T]] = []
        self.parse, self.order, self.pull = parse, order, pull
        self._cond = threading.Condition()

    def __call__(self, msg: Any) -> None:
        self.add(self.parse(msg))

    def add(self, item: T) -> None:
        with self._cond:
            self.arrivals.append((time.monotonic(), item))
            self._cond.notify_all()

    def __len__(self) -> int:
        with self._cond:
            return len(self.arrivals)

    @property
    def items(self) -> list[T]:
        """Every item so far, in arrival order."""
        with self._cond:
            return [item for _, item in self.arrivals]

    def snapshot(self) -> list[T]:
        """Every item so far, in ``order`` (arrival order without one)."""
        items = self.items
        return sorted(items, key=self.order) if self.order else items

    def arrival(self, item: T) -> float:
        """When ``item`` arrived."""
        with self._cond:
            return next(when for when, seen in self.arrivals if seen is item)

    def matching(self, match: Callable[[T], object]) -> list[T]:
        return [item for item in self.snapshot() if match(item)]

    def first(self, pick: Callable[[list[tuple[float, T]]], R | None], timeout: float,
              what: str) -> R:
        """The first non-None ``pick(arrivals)``, looked at on every arrival; AssertionError
        naming ``what`` (and the last items) after ``timeout`` seconds, scaled."""
        timeout = scaled(timeout)
        deadline = time.monotonic() + timeout
        while True:
            with self._cond:
                found = pick(list(self.arrivals))
                if found is not None:
                    return found
                left = deadline - time.monotonic()
                if left <= 0:
                    seen = [self.describe(item) for _, item in self.arrivals][-10:]
                    raise AssertionError(f"{timed_out(timeout, what)}; last seen: {seen}")
                if self.pull is None:
                    self._cond.wait(min(left, 1.0))
                    continue
            self.pull(min(left, 1.0))

    def wait(self, match: Callable[[T], object], timeout: float = 10.0,
             what: str = "a matching item") -> T:
        """The first item (in ``order``) that ``match`` accepts, waiting for it if need be."""
        return self.first(lambda _: next(iter(self.matching(match)), None), timeout, what)

    def wait_count(self, count: int, timeout: float = 10.0) -> None:
        """Wait until ``count`` items have arrived in all."""
        self.first(lambda arrivals: True if len(arrivals) >= count else None, timeout,
                   f"{count} items")

    def none_within(self, match: Callable[[T], object], seconds: float,
                    what: str = "item") -> None:
        """Watch for ``seconds`` (not scaled): AssertionError at once if a match comes."""
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            found = self.matching(match)
            assert not found, f"unexpected {what}: {[self.describe(i) for i in found]}"
            if self.pull is not None:
                self.pull(left)
            else:
                with self._cond:
                    self._cond.wait(left)
        found = self.matching(match)
        assert not found, f"unexpected {what}: {[self.describe(i) for i in found]}"

    @staticmethod
    def describe(item: object) -> object:
        return dict(item.attrib) if isinstance(item, etree._Element) else item


class Events(Collector[Event]):
    """The events of one deployable, subscribed (and attached) before anything happens.

    ``find``/``wait``/``none_within`` match fields: ``type``, ``assembly``, ``resource``,
    ``state``, ``after`` (seq greater than), any other keyword an ``extra`` attribute.
    """

    def __init__(self, bus: Bus, deployable: str) -> None:
        super().__init__(lambda msg: Event.from_xml(msg.body), order=lambda e: e.seq)
        self.sub = bus.subscribe(f"pcloud.event.{deployable}.#", self)
        assert self.sub.wait_attached(10.0)

    @staticmethod
    def matcher(type=None, assembly=None, resource=None, state=None, after: int = 0,
                **extra) -> Callable[[Event], bool]:
        return lambda e: (e.seq > after and (type is None or e.type == type)
                          and (assembly is None or e.assembly == assembly)
                          and (resource is None or e.resource == resource)
                          and (state is None or e.state == state)
                          and all(e.extra.get(k) == v for k, v in extra.items()))

    def find(self, **match) -> list[Event]:
        return self.matching(self.matcher(**match))

    def wait(self, timeout: float = 30.0, **match) -> Event:
        return super().wait(self.matcher(**match), timeout, f"event {match}")

    def none_within(self, seconds: float, **match) -> None:
        super().none_within(self.matcher(**match), seconds, f"event {match}")

    def last_seq(self) -> int:
        items = self.snapshot()
        return items[-1].seq if items else 0

    def close(self) -> None:
        self.sub.cancel()

    @staticmethod
    def describe(item: object) -> object:
        return (item.seq, item.type, item.assembly, item.resource, item.state) \
            if isinstance(item, Event) else item


class Heartbeats(Collector[etree._Element]):
    """Heartbeats of one assembly (``bus.subscribe(key, heartbeats)``)."""

    def __init__(self) -> None:
        super().__init__(xml_body)

    def first_after(self, since: float, timeout: float) -> tuple[float, etree._Element]:
        """The first heartbeat that arrived after ``since`` (monotonic), with its arrival."""
        return self.first(lambda arrivals: next(((when, beat) for when, beat in arrivals
                                                  if when > since), None),
                          timeout, "a heartbeat")
