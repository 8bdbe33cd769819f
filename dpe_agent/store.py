"""The DPE's durable state: ``<state>/dpe/<dep>/dpe.sqlite``.

What must survive a DPE restart lives here: the per-deployable event ``seq`` counter and the
event log (``events_query`` serves it, the CPE back-fills from it), the escalation windows and
back-offs, and the last known state of every component (so a restarted DPE knows what should be
running and what was already reported). Every write is one transaction; WAL with
``synchronous=NORMAL`` keeps commits off the fsync path, which matters because events are
written on the failure-recovery path.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY, time TEXT NOT NULL, type TEXT NOT NULL,
    assembly TEXT, resource TEXT, xml TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS states (
    kind TEXT NOT NULL, name TEXT NOT NULL, state TEXT NOT NULL, detail TEXT,
    PRIMARY KEY (kind, name));
"""

MAX_EVENTS = 100_000


class DpeStore:
    """One SQLite database per deployable; safe to share between threads (one lock)."""

    def __init__(self, path: Path, max_events: int = MAX_EVENTS) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.max_events = max_events
        self._lock = threading.RLock()
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """All statements inside commit together or not at all."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _get_meta(self, db: sqlite3.Connection, key: str) -> str | None:
        row = db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def _set_meta(self, db: sqlite3.Connection, key: str, value: str) -> None:
        db.execute("INSERT INTO meta (key, value) VALUES (?, ?) "
                   "ON CONFLICT(key) DO UPDATE SET value = excluded.value", (key, value))

    def get(self, key: str) -> str | None:
        with self._lock:
            return self._get_meta(self._db, key)

    def set(self, key: str, value: str) -> None:
        with self.transaction() as db:
            self._set_meta(db, key, value)

    def last_seq(self) -> int:
        return int(self.get("seq") or 0)

    def raise_seq(self, floor: int) -> int:
        """Never number an event at or below ``floor`` (events numbered elsewhere while this
        DPE did not run, e.g. by the CPE): the counter becomes max(stored, floor)."""
        with self.transaction() as db:
            seq = max(int(self._get_meta(db, "seq") or 0), floor)
            self._set_meta(db, "seq", str(seq))
        return seq

    def add_event(self, make: Callable[[int], tuple[str, str, str, str | None, str | None]]
                  ) -> tuple[int, str]:
        """Allocate the next seq and log the event ``make(seq)`` builds, atomically.

        ``make`` returns ``(xml, time, type, assembly, resource)``; returns ``(seq, xml)``.
        """
        with self.transaction() as db:
            seq = int(self._get_meta(db, "seq") or 0) + 1
            xml, time, etype, assembly, resource = make(seq)
            db.execute("INSERT INTO events (seq, time, type, assembly, resource, xml) "
                       "VALUES (?, ?, ?, ?, ?, ?)", (seq, time, etype, assembly, resource, xml))
            self._set_meta(db, "seq", str(seq))
            if seq % 1000 == 0:
                db.execute("DELETE FROM events WHERE seq <= ?", (seq - self.max_events,))
        return seq, xml

    def events(self, since_seq: int = 0, limit: int = 100) -> list[str]:
        """Event documents with seq > since_seq, oldest first."""
        with self._lock:
            rows = self._db.execute("SELECT xml FROM events WHERE seq > ? ORDER BY seq LIMIT ?",
                                    (since_seq, max(0, limit))).fetchall()
        return [row[0] for row in rows]

    def save_json(self, key: str, value: Any) -> None:
        self.set(key, json.dumps(value, sort_keys=True))

    def load_json(self, key: str, default: Any = None) -> Any:
        text = self.get(key)
        return json.loads(text) if text else default

    def save_state(self, kind: str, name: str, state: str, detail: str | None = None) -> None:
        with self.transaction() as db:
            db.execute("INSERT INTO states (kind, name, state, detail) VALUES (?, ?, ?, ?) "
                       "ON CONFLICT(kind, name) DO UPDATE SET state = excluded.state, "
                       "detail = excluded.detail", (kind, name, state, detail))

    def delete_state(self, kind: str, name: str) -> None:
        with self.transaction() as db:
            db.execute("DELETE FROM states WHERE kind = ? AND (name = ? OR name LIKE ?)",
                       (kind, name, name + "/%"))

    def states(self, kind: str) -> dict[str, tuple[str, str | None]]:
        """Last known states of one kind (``deployable``, ``assembly``, ``resource``)."""
        with self._lock:
            rows = self._db.execute("SELECT name, state, detail FROM states WHERE kind = ?",
                                    (kind,)).fetchall()
        return {name: (state, detail) for name, state, detail in rows}
