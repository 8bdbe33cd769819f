"""The CPE store: migrations, one transaction per change, events once per (deployable, seq)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from cpe_agent.store import SCHEMA_VERSION, Store, StoredEvent, StoreError


def _event(dep: str, seq: int, time: str = "2026-11-21T10:00:00.000Z") -> StoredEvent:
    return StoredEvent(dep, seq, "config_error", time, f'<event seq="{seq}" deployable="{dep}"/>')


def test_new_store_is_at_the_latest_schema_version(tmp_path: Path) -> None:
    store = Store(tmp_path / "cpe.sqlite")
    assert store.schema_version == SCHEMA_VERSION
    store.close()


def test_version_1_database_is_migrated_keeping_its_rows(tmp_path: Path) -> None:
    path = tmp_path / "cpe.sqlite"
    conn = sqlite3.connect(path)
    from cpe_agent.store import MIGRATIONS

    MIGRATIONS[0](conn)
    conn.execute("INSERT INTO deployables VALUES ('d', 'u', '<deployable/>', 'running', "
                 "'running', 't', 't')")
    conn.execute("PRAGMA user_version = 1")
    conn.commit()
    conn.close()
    store = Store(path)
    stored = store.get("d")
    assert stored is not None and stored.generation == 1 and stored.state == "running"
    store.close()


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "cpe.sqlite"
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(StoreError):
        Store(path)


def test_duplicate_start_is_refused_but_a_stopped_deployable_starts_again(
        tmp_path: Path) -> None:
    store = Store(tmp_path / "cpe.sqlite")
    store.start("d", "u1", "<a/>", "starting")
    with pytest.raises(StoreError):
        store.start("d", "u1", "<b/>", "starting")
    assert store.get("d").document == "<a/>"
    store.set_desired("d", "stopped", "stopped")
    again = store.start("d", "u1", "<b/>", "starting")
    assert again.document == "<b/>" and again.generation == 2 and again.desired == "running"
    store.close()


def test_events_are_kept_once_per_deployable_and_seq(tmp_path: Path) -> None:
    store = Store(tmp_path / "cpe.sqlite")
    assert store.add_event(_event("d", 1))
    assert not store.add_event(_event("d", 1))
    assert store.add_event(_event("e", 1))
    store.add_event(_event("d", 2))
    store.add_event(_event("d", 4))
    assert [e.seq for e in store.events("d")] == [1, 2, 4]
    assert [e.seq for e in store.events("d", since_seq=1, limit=1)] == [2]
    assert store.contiguous_seq("d") == 2
    assert store.max_seq("d") == 4
    store.close()


def test_cpe_numbered_event_lands_above_both_logs(tmp_path: Path) -> None:
    store = Store(tmp_path / "cpe.sqlite")
    store.add_event(_event("d", 3))
    made = store.add_event_next_seq("d", lambda seq: _event("d", seq), floor=7)
    assert made.seq == 8
    assert store.max_seq("d") == 8
    store.close()


def test_event_log_keeps_the_newest_events_of_each_deployable(tmp_path: Path) -> None:
    store = Store(tmp_path / "cpe.sqlite", max_events=3)
    for seq in range(1, 6):
        assert store.add_event(_event("d", seq))
    store.add_event(_event("e", 1))
    assert [e.seq for e in store.events("d")] == [3, 4, 5]
    assert [e.seq for e in store.events("e")] == [1]
    assert store.contiguous_seq("d") == 5          # pruned seqs are not a gap
    assert not store.add_event(_event("d", 1))      # older than the window: not kept
    assert [e.seq for e in store.events("d")] == [3, 4, 5]
    made = store.add_event_next_seq("d", lambda seq: _event("d", seq))
    assert made.seq == 6 and [e.seq for e in store.events("d")] == [4, 5, 6]
    store.add_event(_event("d", 8))                 # 7 missing: back-fill from 6
    assert [e.seq for e in store.events("d")] == [5, 6, 8]    # the newest three, by count
    assert store.contiguous_seq("d") == 6
    store.add_event(_event("d", 7))
    assert store.contiguous_seq("d") == 8
    store.add_event(_event("d", 9_000_000))         # a huge seq erases nothing
    assert [e.seq for e in store.events("d")] == [7, 8, 9_000_000]
    store.close()
