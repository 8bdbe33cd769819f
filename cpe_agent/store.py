"""The CPE's durable state: stored deployables and the event log, in one SQLite file.

Everything the CPE promises to keep (a deployable accepted by ``deployable_start``, every event
it saw) lives here and nowhere else, so a CPE killed at any instant restarts from this file.
WAL mode with ``synchronous=FULL`` and one transaction per change means a change is either
fully on disk or not at all. The schema is versioned with ``PRAGMA user_version``; each
migration runs in its own transaction.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from pcloud import wire

DESIRED_RUNNING = "running"
DESIRED_STOPPED = "stopped"

MAX_QUERY_LIMIT = 1000
#: Events kept per deployable (the newest, by seq), as many as its DPE keeps of its own.
MAX_EVENTS = 100_000


class StoreError(Exception):
    """A store operation was refused (e.g. a duplicate or unknown deployable)."""


@dataclass(frozen=True)
class StoredDeployable:
    """One row of the deployables table."""

    name: str
    uuid: str
    document: str
    desired: str
    state: str
    generation: int
    created: str
    updated: str
    last_status: str | None


@dataclass(frozen=True)
class StoredEvent:
    """One persisted event: its identity, type, time and the XML document as published."""

    deployable: str
    seq: int
    type: str
    time: str
    xml: str


def _v1(conn: sqlite3.Connection) -> None:
    conn.execute(
        """CREATE TABLE deployables (
               name     TEXT PRIMARY KEY,
               uuid     TEXT NOT NULL,
               document TEXT NOT NULL,
               desired  TEXT NOT NULL CHECK (desired IN ('running', 'stopped')),
               state    TEXT NOT NULL,
               created  TEXT NOT NULL,
               updated  TEXT NOT NULL)""")
    conn.execute(
        """CREATE TABLE events (
               id         INTEGER PRIMARY KEY AUTOINCREMENT,
               deployable TEXT NOT NULL,
               seq        INTEGER NOT NULL,
               type       TEXT NOT NULL,
               time       TEXT NOT NULL,
               xml        TEXT NOT NULL,
               UNIQUE (deployable, seq))""")
    conn.execute("CREATE INDEX events_time ON events (time, deployable, seq)")


def _v2(conn: sqlite3.Connection) -> None:
    """Count reloads and keep the DPE's last status answer for when it cannot answer."""
    conn.execute("ALTER TABLE deployables ADD COLUMN generation INTEGER NOT NULL DEFAULT 1")
    conn.execute("ALTER TABLE deployables ADD COLUMN last_status TEXT")


MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = [_v1, _v2]
SCHEMA_VERSION = len(MIGRATIONS)


class Store:
    """Thread-safe access to the CPE database; every public method is one transaction."""

    def __init__(self, path: Path, max_events: int = MAX_EVENTS) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.max_events = max_events
        self._lock = threading.RLock()
        self._conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False,
                                     timeout=30.0)
        self._conn.row_factory = sqlite3.Row
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=FULL")
        self._conn.execute("PRAGMA foreign_keys=ON")
        self._migrate()

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def _migrate(self) -> None:
        version = self._conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StoreError(f"{self.path} has schema version {version}, newer than this "
                             f"CPE's {SCHEMA_VERSION}; refusing to touch it")
        for number in range(version, SCHEMA_VERSION):
            with self._tx() as conn:
                MIGRATIONS[number](conn)
                conn.execute(f"PRAGMA user_version = {number + 1}")

    @property
    def schema_version(self) -> int:
        with self._lock:
            return self._conn.execute("PRAGMA user_version").fetchone()[0]

    # --- deployables -------------------------------------------------------------------

    def get(self, name: str) -> StoredDeployable | None:
        with self._lock:
            row = self._conn.execute("SELECT * FROM deployables WHERE name = ?",
                                     (name,)).fetchone()
        return _deployable(row) if row else None

    def list(self) -> list[StoredDeployable]:
        with self._lock:
            rows = self._conn.execute("SELECT * FROM deployables ORDER BY name").fetchall()
        return [_deployable(row) for row in rows]

    def find_uuid(self, uuid: str) -> StoredDeployable | None:
        with self._lock:
            row = self._conn.execute("SELECT * FROM deployables WHERE uuid = ?",
                                     (uuid,)).fetchone()
        return _deployable(row) if row else None

    def start(self, name: str, uuid: str, document: str, state: str) -> StoredDeployable:
        """Store a deployable to run: new, or a stopped one started again with a new document.

        Refuses a name whose deployable is meant to be running (a duplicate start).
        """
        stamp = wire.now()
        with self._tx() as conn:
            row = conn.execute("SELECT desired FROM deployables WHERE name = ?",
                               (name,)).fetchone()
            if row is None:
                conn.execute("INSERT INTO deployables (name, uuid, document, desired, state, "
                             "created, updated) VALUES (?, ?, ?, ?, ?, ?, ?)",
                             (name, uuid, document, DESIRED_RUNNING, state, stamp, stamp))
            elif row["desired"] == DESIRED_RUNNING:
                raise StoreError(f"deployable {name!r} is already started")
            else:
                conn.execute("UPDATE deployables SET uuid = ?, document = ?, desired = ?, "
                             "state = ?, generation = generation + 1, updated = ?, "
                             "last_status = NULL WHERE name = ?",
                             (uuid, document, DESIRED_RUNNING, state, stamp, name))
        stored = self.get(name)
        assert stored is not None
        return stored

    def replace_document(self, name: str, document: str) -> StoredDeployable:
        """Store a reloaded document for an existing deployable."""
        with self._tx() as conn:
            cursor = conn.execute("UPDATE deployables SET document = ?, "
                                  "generation = generation + 1, updated = ? WHERE name = ?",
                                  (document, wire.now(), name))
            if cursor.rowcount != 1:
                raise StoreError(f"no deployable named {name!r}")
        stored = self.get(name)
        assert stored is not None
        return stored

    def set_desired(self, name: str, desired: str, state: str) -> None:
        with self._tx() as conn:
            cursor = conn.execute("UPDATE deployables SET desired = ?, state = ?, updated = ? "
                                  "WHERE name = ?", (desired, state, wire.now(), name))
            if cursor.rowcount != 1:
                raise StoreError(f"no deployable named {name!r}")

    def delete(self, name: str) -> None:
        """Forget a stopped deployable and its event history (a later start under the same
        name begins a new history, as its DPE's own files are gone too)."""
        with self._tx() as conn:
            row = conn.execute("SELECT desired, state FROM deployables WHERE name = ?",
                               (name,)).fetchone()
            if row is None:
                raise StoreError(f"no deployable named {name!r}")
            if row["desired"] != DESIRED_STOPPED or row["state"] != "stopped":
                raise StoreError(f"deployable {name!r} is {row['state']}: stop it first")
            conn.execute("DELETE FROM events WHERE deployable = ?", (name,))
            conn.execute("DELETE FROM deployables WHERE name = ?", (name,))

    def set_state(self, name: str, state: str) -> None:
        """Record the last known state (from a DPE event, heartbeat or the supervisor)."""
        with self._tx() as conn:
            conn.execute("UPDATE deployables SET state = ?, updated = ? "
                         "WHERE name = ? AND state != ?", (state, wire.now(), name, state))

    def set_last_status(self, name: str, status_xml: str) -> None:
        with self._tx() as conn:
            conn.execute("UPDATE deployables SET last_status = ? WHERE name = ?",
                         (status_xml, name))

    # --- events ------------------------------------------------------------------------

    def add_event(self, event: StoredEvent) -> bool:
        """Persist an event once per (deployable, seq); False if it was already there."""
        with self._tx() as conn:
            cursor = conn.execute("INSERT OR IGNORE INTO events (deployable, seq, type, time, "
                                  "xml) VALUES (?, ?, ?, ?, ?)",
                                  (event.deployable, event.seq, event.type, event.time,
                                   event.xml))
            if cursor.rowcount != 1:
                return False
            self._prune(conn, event.deployable)
            # An event older than the kept window is pruned at once: not news.
            return conn.execute("SELECT 1 FROM events WHERE deployable = ? AND seq = ?",
                                (event.deployable, event.seq)).fetchone() is not None

    def _prune(self, conn: sqlite3.Connection, deployable: str) -> None:
        """Keep the newest ``max_events`` events of a deployable (in the caller's transaction).

        By count, never by seq arithmetic: one event with a huge seq must not push the whole
        history out of the window."""
        conn.execute("DELETE FROM events WHERE deployable = ? AND seq < "
                     "(SELECT seq FROM events WHERE deployable = ? ORDER BY seq DESC "
                     "LIMIT 1 OFFSET ?)", (deployable, deployable, self.max_events - 1))

    def max_seq(self, deployable: str) -> int:
        with self._lock:
            row = self._conn.execute("SELECT MAX(seq) FROM events WHERE deployable = ?",
                                     (deployable,)).fetchone()
        return int(row[0] or 0)

    def contiguous_seq(self, deployable: str) -> int:
        """The highest seq up to which no event of ``deployable`` is missing. Seqs below the
        kept window (pruned, see ``max_events``) do not count as missing."""
        with self._lock:
            floor = max(0, self.max_seq(deployable) - self.max_events)
            count, lowest = self._conn.execute(
                "SELECT COUNT(*), MIN(seq) FROM events WHERE deployable = ?",
                (deployable,)).fetchone()
            if count >= self.max_events:        # the window is full: older ones were pruned
                floor = max(floor, int(lowest) - 1)
            row = self._conn.execute(
                "SELECT MIN(e.seq) FROM events e WHERE e.deployable = ? AND e.seq > ? "
                "AND NOT EXISTS (SELECT 1 FROM events n WHERE n.deployable = e.deployable "
                "AND n.seq = e.seq + 1) AND EXISTS (SELECT 1 FROM events f "
                "WHERE f.deployable = e.deployable AND f.seq = ?)",
                (deployable, floor, floor + 1)).fetchone()
        return int(row[0] or floor)

    def add_event_next_seq(self, deployable: str, build: Callable[[int], StoredEvent],
                           floor: int = 0) -> StoredEvent:
        """Allocate the next seq of a deployable (above ``floor``) and persist ``build(seq)``.

        Used for events the CPE raises itself when no DPE runs to number them.
        """
        with self._tx() as conn:
            row = conn.execute("SELECT MAX(seq) FROM events WHERE deployable = ?",
                               (deployable,)).fetchone()
            event = build(max(int(row[0] or 0), floor) + 1)
            conn.execute("INSERT INTO events (deployable, seq, type, time, xml) "
                         "VALUES (?, ?, ?, ?, ?)",
                         (event.deployable, event.seq, event.type, event.time, event.xml))
            self._prune(conn, event.deployable)
        return event

    def events(self, deployable: str | None = None, since_seq: int = 0,
               limit: int = 100) -> list[StoredEvent]:
        """Events oldest first: by seq for one deployable, by time across all of them."""
        limit = max(0, min(limit, MAX_QUERY_LIMIT))
        with self._lock:
            if deployable is None:
                rows = self._conn.execute(
                    "SELECT * FROM events WHERE seq > ? ORDER BY time, deployable, seq "
                    "LIMIT ?", (since_seq, limit)).fetchall()
            else:
                rows = self._conn.execute(
                    "SELECT * FROM events WHERE deployable = ? AND seq > ? ORDER BY seq "
                    "LIMIT ?", (deployable, since_seq, limit)).fetchall()
        return [StoredEvent(r["deployable"], r["seq"], r["type"], r["time"], r["xml"])
                for r in rows]


def _deployable(row: sqlite3.Row) -> StoredDeployable:
    return StoredDeployable(name=row["name"], uuid=row["uuid"], document=row["document"],
                            desired=row["desired"], state=row["state"],
                            generation=row["generation"], created=row["created"],
                            updated=row["updated"], last_status=row["last_status"])

