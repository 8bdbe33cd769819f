"""Bad input of every kind to the CPE: an error response with its code, a config_error event
where a deployable is named, and nothing stored changes. Needs no DPE."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.cpe import AmqpClient, CpedProcess, EventWatcher, deployable_xml, running_cped, unique


@pytest.fixture(scope="module")
def cpe(broker, tmp_path_factory: pytest.TempPathFactory
        ) -> tuple[CpedProcess, AmqpClient, EventWatcher]:
    url = broker.url
    state = tmp_path_factory.mktemp("cpe-input")
    watcher = EventWatcher(url)
    with running_cped(state, url) as (cped, client):
        yield cped, client, watcher
    watcher.close()


def _config_error(watcher: EventWatcher, name: str, code: str) -> None:
    watcher.wait_for(lambda e: e.get("deployable") == name and e.get("type") == "config_error"
                     and code in (e.get("reason") or ""), 15, f"config_error {code} of {name}")


def test_empty_cpe_lists_nothing(cpe) -> None:
    _, client, _ = cpe
    assert client.listing() == {}


@pytest.mark.parametrize("body, code", [
    ("<deployable name='x'", "malformed_xml"),
    ("", "malformed_xml"),
    ("<?xml version='1.0'?><!DOCTYPE d [<!ENTITY a 'aaaaaaaaaa'><!ENTITY b '&a;&a;&a;&a;'>]>"
     "<deployable name='&b;'/>", "malformed_xml"),
    ("<deployable name='x'>" + "<!-- padding -->" * 80000 + "</deployable>", "malformed_xml"),
])
def test_unreadable_bodies_are_refused(cpe, body: str, code: str) -> None:
    _, client, _ = cpe
    assert client.error("deployable_start", body)[0] == code
    assert client.listing() == {}


def test_unknown_method_is_refused(cpe) -> None:
    _, client, _ = cpe
    code, message = client.error("deployable_explode", "<deployable name='x'/>")
    assert code == "unknown_method" and "deployable_explode" in message


def test_wrong_root_element_is_refused(cpe) -> None:
    _, client, _ = cpe
    assert client.error("deployable_start", "<service name='x' class='process'/>")[0] == \
        "invalid_request"
    assert client.error("deployables_list", "<deployable name='x'/>")[0] == "invalid_request"
    assert client.error("events_query", "<events limit='many'/>")[0] == "invalid_request"


def test_schema_invalid_deployable_is_refused_with_a_config_error(cpe) -> None:
    _, client, watcher = cpe
    name = unique("bad")
    body = deployable_xml(name).replace('class="process"', 'class="magic"')
    code, message = client.error("deployable_start", body)
    assert code == "invalid_deployable" and "line" in message or "class" in message
    _config_error(watcher, name, "invalid_deployable")
    assert name not in client.listing()
    assert [e.get("type") for e in client.events(name)] == ["config_error"]


def test_semantically_invalid_deployable_is_refused(cpe) -> None:
    _, client, watcher = cpe
    name = unique("dep")
    body = deployable_xml(name, {"a1": ["s1", "s1"]})
    assert client.error("deployable_start", body)[0] == "invalid_deployable"
    _config_error(watcher, name, "invalid_deployable")
    assert name not in client.listing()


@pytest.mark.parametrize("method", ["deployable_stop", "deployable_delete"])
def test_unknown_deployable_is_refused_with_a_config_error(cpe, method: str) -> None:
    _, client, watcher = cpe
    name = unique("ghost")
    code, _ = client.error(method, f'<deployable name="{name}"/>')
    assert code == "unknown_deployable"
    _config_error(watcher, name, "unknown_deployable")
    assert name not in client.listing()


def test_read_only_typos_publish_and_store_nothing(cpe) -> None:
    """A mistyped deployable_status is not an event: nothing is published or stored."""
    _, client, watcher = cpe
    name = unique("typo")
    code, message = client.error("deployable_status", f'<deployable name="{name}"/>')
    assert code == "unknown_deployable" and name in message
    assert client.error("events_query", f'<events deployable="{name}"/>')[0] == \
        "unknown_deployable"
    marker = unique("mark")      # a later event proves the watcher saw everything before it
    client.error("deployable_stop", f'<deployable name="{marker}"/>')
    _config_error(watcher, marker, "unknown_deployable")
    assert not [e for e in watcher.seen if e.get("deployable") == name]


@pytest.mark.parametrize("infrastructure", ["openstack"])
def test_unavailable_infrastructure_is_refused_up_front(cpe, infrastructure: str) -> None:
    _, client, watcher = cpe
    name = unique("cloud")
    document = deployable_xml(name).replace('infrastructure="process"',
                                            f'infrastructure="{infrastructure}"')
    code, message = client.error("deployable_start", document)
    assert code == "infrastructure_unavailable"
    assert infrastructure in message and "not available" in message
    _config_error(watcher, name, "infrastructure_unavailable")
    assert name not in client.listing()


def test_reload_of_unknown_deployable_is_refused(cpe) -> None:
    _, client, watcher = cpe
    name = unique("ghost")
    assert client.error("deployable_reload", deployable_xml(name))[0] == "unknown_deployable"
    _config_error(watcher, name, "unknown_deployable")


def test_config_error_seqs_increase_per_deployable(cpe) -> None:
    _, client, _ = cpe
    name = unique("ghost")
    for _ in range(3):
        client.error("deployable_stop", f'<deployable name="{name}"/>')
    assert [int(e.get("seq")) for e in client.events(name)] == [1, 2, 3]
    assert [int(e.get("seq")) for e in client.events(name, since=2)] == [3]


def test_events_query_beyond_64_bits_matches_nothing(cpe) -> None:
    _, client, _ = cpe
    name = unique("ghost")
    client.error("deployable_stop", f'<deployable name="{name}"/>')
    huge = str(2**64 + 5)
    assert client.events(name, since=int(huge)) == []
    assert list(client.call("events_query", f'<events since_seq="{huge}" limit="{huge}"/>')) == []
    assert [e.get("seq") for e in client.call(
        "events_query", f'<events deployable="{name}" limit="{huge}"/>')] == ["1"]


def test_events_query_of_unknown_deployable_is_refused(cpe) -> None:
    _, client, _ = cpe
    assert client.error("events_query", f'<events deployable="{unique("none")}"/>')[0] == \
        "unknown_deployable"


def test_bad_names_are_refused_without_an_event(cpe) -> None:
    _, client, _ = cpe
    assert client.error("deployable_stop", '<deployable name="../etc"/>')[0] == \
        "invalid_request"


def test_store_survives_it_all(cpe, tmp_path: Path) -> None:
    cped, client, _ = cpe
    assert client.listing() == {}
    assert cped.proc is not None and cped.proc.poll() is None
