"""The CPE with real DPEs: every method on a running deployable, reload, CPE and DPE deaths."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
from support.cpe import (
    AmqpClient,
    CpedProcess,
    EventWatcher,
    deployable_xml,
    running_cped,
    service_pid,
    unique,
)
from support.waiting import wait_until


@pytest.fixture
def cpe(broker, tmp_path: Path):
    url = broker.url
    watcher = EventWatcher(url)
    with running_cped(tmp_path / "state", url) as (cped, client):
        yield cped, client, watcher
    watcher.close()


def _running(client: AmqpClient, name: str, timeout: float = 60) -> None:
    wait_until(lambda: client.status(name).get("state") == "running", timeout,
               f"{name} running")


def _dpe_pid(cped: CpedProcess, name: str) -> int:
    return int((cped.state_dir / "dpe" / name / "dped.pid").read_text())


def test_start_status_list_events_stop_and_start_again(cpe) -> None:
    cped, client, watcher = cpe
    name = unique("dep")
    result = client.call("deployable_start", deployable_xml(name, {"a1": ["s1"], "a2": ["s2"]},
                                                            ("a1:s1", "a2:s2")))
    assert (result.tag, result.get("name"), result.get("state")) == \
        ("deployable", name, "starting")
    _running(client, name)
    status = client.status(name)
    assert {a.get("name"): [(r.get("name"), r.get("state"), r.get("fail_count"))
                            for r in a] for a in status} == \
        {"a1": [("s1", "running", "0")], "a2": [("s2", "running", "0")]}
    assert client.listing()[name] == "running"
    events = client.events(name)
    seqs = [int(e.get("seq")) for e in events]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    assert any(e.get("type") == "deployable_state_change" and e.get("state") == "running"
               for e in events)
    assert client.events(name, since=seqs[-2]) == events[-1:] or \
        [e.get("seq") for e in client.events(name, since=seqs[-2])][0] == str(seqs[-1])

    answer = client.call("deployable_stop", f'<deployable name="{name}"/>')
    assert answer.get("state") == "stopping"
    wait_until(lambda: client.listing()[name] == "stopped", 60, f"{name} stopped")
    wait_until(lambda: service_pid(cped.state_dir, name, "a1", "s1") is None, 30,
               "s1 gone")
    assert client.status(name).get("state") == "stopped"
    asker = client.user_id.decode()          # who asked is stored with what it caused
    states = {e.get("state"): e for e in client.events(name)
              if e.get("type") == "deployable_state_change"}
    assert states["starting"].get("requested_by") == asker
    assert states["stopping"].get("requested_by") == asker

    client.call("deployable_start", deployable_xml(name))
    _running(client, name)
    later = [int(e.get("seq")) for e in client.events(name)]
    assert later[: len(seqs)] == seqs and later[-1] > seqs[-1]


def test_duplicate_start_is_refused_with_a_config_error_numbered_by_the_dpe(cpe) -> None:
    cped, client, watcher = cpe
    name = unique("dep")
    client.call("deployable_start", deployable_xml(name))
    _running(client, name)
    pid = service_pid(cped.state_dir, name, "a1", "s1")
    before = max(int(e.get("seq")) for e in client.events(name))
    code, message = client.error("deployable_start", deployable_xml(name, {"a1": ["s9"]}))
    assert code == "duplicate_deployable" and name in message
    event = watcher.wait_for(lambda e: e.get("deployable") == name
                             and e.get("type") == "config_error", 15, "config_error")
    assert int(event.get("seq")) > before
    assert service_pid(cped.state_dir, name, "a1", "s1") == pid
    assert [r.get("name") for r in client.status(name).iter("resource")] == ["s1"]


def test_reload_adds_a_service_and_leaves_the_others_alone(cpe) -> None:
    cped, client, _ = cpe
    name = unique("dep")
    client.call("deployable_start", deployable_xml(name, {"a1": ["s1"], "a2": ["s2"]}))
    _running(client, name)
    pids = {s: service_pid(cped.state_dir, name, a, s) for a, s in (("a1", "s1"), ("a2", "s2"))}
    assert all(pids.values())
    before = max(int(e.get("seq")) for e in client.events(name))
    result = client.call("deployable_reload",
                         deployable_xml(name, {"a1": ["s1", "s3"], "a2": ["s2"]}))
    assert result.get("state") == "running"     # adding components is neither a (re)start
    wait_until(lambda: service_pid(cped.state_dir, name, "a1", "s3"), 60, "s3 started")
    _running(client, name)                      # nor a failure
    assert not [dict(e.attrib) for e in client.events(name, since=before)
                if e.get("type") == "deployable_state_change"]
    assert {s: service_pid(cped.state_dir, name, a, s)
            for a, s in (("a1", "s1"), ("a2", "s2"))} == pids
    assert "s3" in (cped.state_dir / "dpe" / name / "deployable.xml").read_text()
    unchanged = client.call("deployable_reload",
                            deployable_xml(name, {"a1": ["s1", "s3"], "a2": ["s2"]}))
    assert unchanged.get("reason") == "unchanged"


def test_reload_that_renames_or_breaks_changes_nothing(cpe) -> None:
    cped, client, watcher = cpe
    name, other = unique("dep"), unique("dep")
    client.call("deployable_start", deployable_xml(name))
    client.call("deployable_start", deployable_xml(other))
    _running(client, name)
    _running(client, other)
    stored = (cped.state_dir / "dpe" / name / "deployable.xml").read_text()
    other_uuid = client.listing() and client.call("deployables_list", "<deployables/>")
    uuid = next(d.get("uuid") for d in other_uuid if d.get("name") == other)
    renamed = deployable_xml(name).replace(f'name="{name}"', f'name="{name}" uuid="{uuid}"', 1)
    assert client.error("deployable_reload", renamed)[0] == "name_mismatch"
    broken = deployable_xml(name).replace('class="process"', 'class="nope"')
    assert client.error("deployable_reload", broken)[0] == "invalid_deployable"
    watcher.wait_for(lambda e: e.get("deployable") == name and e.get("type") == "config_error"
                     and "invalid_deployable" in e.get("reason", ""), 15, "config_error")
    assert (cped.state_dir / "dpe" / name / "deployable.xml").read_text() == stored
    assert client.status(name).get("state") == "running"


def test_deployable_survives_a_cped_kill_and_is_readopted(cpe) -> None:
    cped, client, _ = cpe
    name = unique("dep")
    client.call("deployable_start", deployable_xml(name))
    _running(client, name)
    dpe = _dpe_pid(cped, name)
    service = service_pid(cped.state_dir, name, "a1", "s1")
    cped.kill9()
    os.kill(service, signal.SIGKILL)  # a failure while no CPE listens: back-filled later
    wait_until(lambda: service_pid(cped.state_dir, name, "a1", "s1") not in (None, service),
               30, "the DPE to restart s1 on its own")
    restarted = service_pid(cped.state_dir, name, "a1", "s1")
    cped.start(client)
    _running(client, name)
    assert _dpe_pid(cped, name) == dpe
    assert service_pid(cped.state_dir, name, "a1", "s1") == restarted
    wait_until(lambda: any(e.get("reason", "").endswith("signal 9")
                           for e in client.events(name)), 30, "the back-filled failure event")


def test_a_killed_dpe_is_restarted_and_resources_keep_running(cpe) -> None:
    cped, client, _ = cpe
    name = unique("dep")
    client.call("deployable_start", deployable_xml(name))
    _running(client, name)
    dpe = _dpe_pid(cped, name)
    service = service_pid(cped.state_dir, name, "a1", "s1")
    os.kill(dpe, signal.SIGKILL)
    wait_until(lambda: (cped.state_dir / "dpe" / name / "dped.pid").exists()
               and _dpe_pid(cped, name) != dpe, 30, "a new DPE")
    _running(client, name)
    assert service_pid(cped.state_dir, name, "a1", "s1") == service


def test_a_stop_whose_dpe_dies_still_stops_everything(cpe) -> None:
    cped, client, _ = cpe
    name = unique("dep")
    client.call("deployable_start", deployable_xml(name, {"a1": ["s1"], "a2": ["s2"]}))
    _running(client, name)
    os.kill(_dpe_pid(cped, name), signal.SIGSTOP)
    client.call("deployable_stop", f'<deployable name="{name}"/>')
    os.kill(_dpe_pid(cped, name), signal.SIGKILL)
    wait_until(lambda: client.listing()[name] == "stopped", 60, f"{name} stopped")
    wait_until(lambda: not any(service_pid(cped.state_dir, name, a, s)
                               for a, s in (("a1", "s1"), ("a2", "s2"))), 30,
               "every service gone")


def test_status_falls_back_to_the_last_known_state_when_the_dpe_is_frozen(cpe) -> None:
    cped, client, _ = cpe
    name = unique("dep")
    client.call("deployable_start", deployable_xml(name))
    _running(client, name)
    dpe = _dpe_pid(cped, name)
    os.kill(dpe, signal.SIGSTOP)
    try:
        status = client.status(name)
        assert status.get("reason") == "last known state: the DPE is not answering"
        assert [(r.get("name"), r.get("state")) for r in status.iter("resource")] == \
            [("s1", "running")]
    finally:
        os.kill(dpe, signal.SIGCONT)


def test_delete_only_when_stopped_and_then_nothing_is_left(cpe) -> None:
    cped, client, watcher = cpe
    name = unique("dep")
    client.call("deployable_start", deployable_xml(name, {"a1": ["s1"], "a2": ["s2"]}))
    _running(client, name)
    listed = next(d for d in client.call("deployables_list", "<deployables/>")
                  if d.get("name") == name)
    assert (listed.get("infrastructure"), listed.get("assemblies")) == ("process", "a1 a2")
    code, message = client.error("deployable_delete", f'<deployable name="{name}"/>')
    assert code == "not_stopped" and "stop it first" in message
    watcher.wait_for(lambda e: e.get("deployable") == name and e.get("type") == "config_error"
                     and "not_stopped" in e.get("reason", ""), 15, "config_error not_stopped")
    assert client.listing()[name] == "running"
    client.call("deployable_stop", f'<deployable name="{name}"/>')
    wait_until(lambda: client.listing()[name] == "stopped", 60, f"{name} stopped")
    result = client.call("deployable_delete", f'<deployable name="{name}"/>')
    assert (result.get("name"), result.get("state")) == (name, "stopped")
    assert name not in client.listing()
    assert not (cped.state_dir / "dpe" / name).exists()
    assert client.error("events_query", f'<events deployable="{name}"/>')[0] == \
        "unknown_deployable"
    client.call("deployable_start", deployable_xml(name))       # a new history
    _running(client, name)
    assert min(int(e.get("seq")) for e in client.events(name)) == 1


def test_fail_counts_start_from_zero_after_a_deliberate_stop(cpe) -> None:
    cped, client, _ = cpe
    name = unique("dep")
    client.call("deployable_start", deployable_xml(name))
    _running(client, name)
    pid = service_pid(cped.state_dir, name, "a1", "s1")
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: next(client.status(name).iter("resource")).get("fail_count") == "1"
               and client.status(name).get("state") == "running", 60, "s1 failed once, back")
    client.call("deployable_stop", f'<deployable name="{name}"/>')
    wait_until(lambda: client.listing()[name] == "stopped", 60, f"{name} stopped")
    assert next(client.status(name).iter("resource")).get("fail_count") == "0"
    client.call("deployable_start", deployable_xml(name))
    _running(client, name)
    resource = next(client.status(name).iter("resource"))
    assert resource.get("fail_count") == "0" and resource.get("last_failure") is None


def test_assembly_uuids_of_another_deployable_are_refused(cpe) -> None:
    _, client, _ = cpe
    first, second = unique("dep"), unique("dep")
    uuid = "0b5e1f4c-7d0a-4c51-9a40-6f1f4b3a2c10"
    with_uuid = '<assembly name="a1" uuid="' + uuid + '" '
    client.call("deployable_start",
                deployable_xml(first).replace('<assembly name="a1" ', with_uuid))
    code, message = client.error(
        "deployable_start", deployable_xml(second).replace('<assembly name="a1" ', with_uuid))
    assert code == "duplicate_uuid" and uuid in message and first in message
    assert second not in client.listing()


def _uuids(document: str) -> dict[str, str]:
    from lxml import etree
    root = etree.fromstring(document.encode())
    return {f"{e.tag}:{e.get('name')}": e.get("uuid")
            for e in root.iter("deployable", "assembly", "service")}


def test_a_restart_without_uuids_keeps_them_and_a_second_stop_says_stopping(cpe) -> None:
    cped, client, _ = cpe
    name = unique("dep")
    client.call("deployable_start", deployable_xml(name))
    _running(client, name)
    listed = {d.get("name"): d.get("uuid")
              for d in client.call("deployables_list", "<deployables/>")}[name]
    document = cped.state_dir / "dpe" / name / "deployable.xml"
    before = _uuids(document.read_text())
    assert before[f"deployable:{name}"] == listed and all(before.values())

    assert client.call("deployable_stop", f'<deployable name="{name}"/>').get("state") == \
        "stopping"
    again = client.call("deployable_stop", f'<deployable name="{name}"/>')
    assert again.get("state") == "stopping"
    wait_until(lambda: client.listing()[name] == "stopped", 60, f"{name} stopped")
    stopped = client.call("deployable_stop", f'<deployable name="{name}"/>')
    assert (stopped.get("state"), stopped.get("reason")) == ("stopping", "already stopped")
    assert client.listing()[name] == "stopped"

    client.call("deployable_start", deployable_xml(name))
    _running(client, name)
    assert {d.get("name"): d.get("uuid")
            for d in client.call("deployables_list", "<deployables/>")}[name] == listed
    assert _uuids(document.read_text()) == before
    shown = deployable_xml(name, {"a1": ["s1", "s2"]}).replace(
        f'name="{name}"', f'name="{name}" uuid="{listed}"', 1)
    assert client.call("deployable_reload", shown).get("state") == "running"


def test_resource_cleanup_goes_to_the_running_dpe_and_refuses_what_is_not_there(cpe) -> None:
    cped, client, watcher = cpe
    name = unique("dep")
    client.call("deployable_start", deployable_xml(name, {"a1": ["s1"]}))
    _running(client, name)
    pid = service_pid(cped.state_dir, name, "a1", "s1")
    answer = client.call("resource_cleanup",
                         f'<resource deployable="{name}" assembly="a1" name="s1"/>')
    assert (answer.tag, answer.get("name"), answer.get("assembly")) == ("resource", "s1", "a1")
    _running(client, name)
    assert service_pid(cped.state_dir, name, "a1", "s1") == pid    # probed, found running
    assert client.error("resource_cleanup", f'<resource deployable="{name}" assembly="a1" '
                                            'name="nope"/>')[0] == "unknown_resource"
    assert client.error("resource_cleanup", '<resource deployable="nosuch" assembly="a1" '
                                            'name="s1"/>')[0] == "unknown_deployable"
    assert client.error("resource_cleanup", f'<deployable name="{name}"/>')[0] == \
        "invalid_request"
