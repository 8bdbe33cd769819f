"""The DPE store: seq survives reopening, events query, rollback, states, JSON blobs."""

import pytest

from dpe_agent.store import DpeStore


def make(kind="resource_state_change", assembly="web", resource="httpd"):
    def build(seq):
        return (f'<event seq="{seq}" type="{kind}"/>', "2026-11-21T10:00:00.000Z", kind,
                assembly, resource)
    return build


def test_seq_increases_and_survives_reopen(tmp_path):
    store = DpeStore(tmp_path / "dpe.sqlite")
    assert store.add_event(make())[0] == 1
    assert store.add_event(make())[0] == 2
    store.close()
    store = DpeStore(tmp_path / "dpe.sqlite")
    seq, xml = store.add_event(make())
    assert seq == 3 and xml == '<event seq="3" type="resource_state_change"/>'
    assert store.last_seq() == 3


def test_events_since_and_limit_oldest_first(tmp_path):
    store = DpeStore(tmp_path / "dpe.sqlite")
    for _ in range(5):
        store.add_event(make())
    assert [e.split('"')[1] for e in store.events(since_seq=2, limit=2)] == ["3", "4"]


def test_failed_event_build_rolls_back_seq(tmp_path):
    store = DpeStore(tmp_path / "dpe.sqlite")
    store.add_event(make())

    def broken(seq):
        raise ValueError("bad event")

    with pytest.raises(ValueError):
        store.add_event(broken)
    assert store.add_event(make())[0] == 2


def test_old_events_are_pruned(tmp_path):
    store = DpeStore(tmp_path / "dpe.sqlite", max_events=10)
    for _ in range(1000):
        store.add_event(make())
    assert len(store.events(limit=5000)) == 10


def test_states_and_json(tmp_path):
    store = DpeStore(tmp_path / "dpe.sqlite")
    store.save_state("resource", "web/httpd", "running")
    store.save_state("resource", "web/httpd", "failed", "exit 9")
    store.save_state("assembly", "web", "running")
    assert store.states("resource") == {"web/httpd": ("failed", "exit 9")}
    store.delete_state("resource", "web")
    assert store.states("resource") == {}
    store.save_json("escalation", {"windows": {"web/httpd": [1.0]}})
    assert store.load_json("escalation") == {"windows": {"web/httpd": [1.0]}}
    assert store.load_json("missing", {}) == {}
