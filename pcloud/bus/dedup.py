"""Duplicate suppression: the bus delivers at least once, these make it look like once.

Duplicates come from resends: a sender resends what the broker had not settled when the
connection dropped, and a caller resends its pending requests after a reconnect. Both keep
the message id, so receivers recognise them by id:

- ``RecentIds``: one per subscription or consumer (per link, kept across reconnects); the
  last ``RECENT_IDS`` ids. A resend follows its original within one prefetch window, far
  fewer messages than that.
- ``Answers``: one per served queue; the response body of each request, keyed by
  ``(reply_to, id)`` (a foreign client's ids need only be unique per client), kept for
  ``ANSWER_TTL`` seconds after the answer, at most ``ANSWER_COUNT`` of them holding at most
  ``ANSWER_BYTES`` of bodies (oldest forgotten first), so that a resent request is answered
  without running its handler again. Callers give up after 10-60 s, and resend after a
  reconnect within that; past any bound a repeat runs the handler again (handlers are
  idempotent by protocol).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from pcloud.bus.message import Message

RECENT_IDS = 4096
ANSWER_COUNT = 1024
ANSWER_BYTES = 32 * 1024 * 1024  # UTF-8 bytes of cached response bodies, all together
ANSWER_TTL = 120.0


class RecentIds:
    """A bounded set of recently seen message ids (oldest forgotten first)."""

    def __init__(self, size: int = RECENT_IDS) -> None:
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


@dataclass
class _Entry:
    stamp: float
    body: str | None = None
    size: int = 0
    repeats: list[Message] = field(default_factory=list)


class Answers:
    """Response bodies of recent requests, so that a repeated request id is not run again."""

    def __init__(self, count: int = ANSWER_COUNT, ttl: float = ANSWER_TTL,
                 clock: Callable[[], float] = time.monotonic,
                 max_bytes: int = ANSWER_BYTES) -> None:
        self._count = count
        self._max_bytes = max_bytes
        self._bytes = 0
        self._ttl = ttl
        self._clock = clock
        self._entries: OrderedDict[tuple[str | None, str], _Entry] = OrderedDict()
        self._lock = threading.Lock()

    def claim(self, request: Message) -> tuple[bool, str | None]:
        """``(True, None)``: a new request, run it and call ``finish``. ``(False, body)``: a
        repeat of an answered request. ``(False, None)``: a repeat of a request still
        running; ``finish`` returns it so that it gets its own answer too."""
        if request.id is None:
            return True, None
        key = (request.reply_to, request.id)
        now = self._clock()
        with self._lock:
            self._expire(now)
            entry = self._entries.get(key)
            if entry is None:
                self._entries[key] = _Entry(now)
                return True, None
            if entry.body is None:
                entry.repeats.append(request)
            return False, entry.body

    def finish(self, request: Message, body: str) -> list[Message]:
        """Remember the answer; returns the repeats that arrived while it ran."""
        if request.id is None:
            return []
        key = (request.reply_to, request.id)
        with self._lock:
            now = self._clock()
            entry = self._entries.pop(key, None) or _Entry(now)
            self._bytes -= entry.size
            entry.body, entry.stamp, entry.size = body, now, len(body.encode())
            self._bytes += entry.size
            self._entries[key] = entry
            repeats, entry.repeats = entry.repeats, []
            self._expire(now)
            return repeats

    @property
    def size(self) -> int:
        """Bytes of response bodies held now."""
        return self._bytes

    def _expire(self, now: float) -> None:
        while self._entries:
            key, entry = next(iter(self._entries.items()))
            if (len(self._entries) <= self._count and self._bytes <= self._max_bytes
                    and now - entry.stamp < self._ttl):
                return
            del self._entries[key]
            self._bytes -= entry.size
