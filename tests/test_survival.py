"""Whole-system survival (docs/architecture.md, "Bad input and survival").

Real cped, dped, agents and broker, each lost in turn.

A cped runs a ``process`` deployable of three assemblies. The broker is killed and restarted,
or frozen past the heartbeat timeout; cped is killed in the middle of a ``deployable_start``;
the DPE is killed while a recovery is in flight; an impostor beats for a silent assembly.
Each time the system must converge without restarting what did not fail, with every resource
running exactly once, and with no process left once the deployable is stopped.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from proton import Message
from support.cpe import (
    deployable_xml,
    running_cped,
    unique,
)
from support.system import SERVICES, SLOW_START, System, leftovers
from support.waiting import wait_until


@pytest.fixture
def system(broker, tmp_path: Path) -> Iterator[System]:
    broker.require_control()
    with running_cped(tmp_path / "state", broker.url) as (cped, client):
        sys_ = System(broker, cped, client, unique("surv"))
        yield sys_
        if cped.proc is not None and cped.proc.poll() is None:
            for name, state in client.listing().items():
                if state != "stopped":
                    client.call("deployable_stop", f'<deployable name="{name}"/>')
            wait_until(lambda: all(s == "stopped" for s in client.listing().values()), 60,
                       "every deployable to stop")
            try:
                wait_until(lambda: not leftovers(sys_), 30, "no process but cped left")
            except AssertionError as timeout:
                raise AssertionError(f"{timeout}: {leftovers(sys_)}") from None


def start(system: System, xml: str | None = None) -> None:
    system.client.call("deployable_start", xml or deployable_xml(system.name, SERVICES))
    system.wait_running()


def test_broker_killed_and_restarted(system: System) -> None:
    start(system)
    services, agents, dpe = system.services(), system.agents(), system.dpe_pid()
    assert all(services.values()) and all(agents.values())
    system.broker.kill9()
    system.broker.start()
    system.reconnect()
    system.wait_running()
    assert system.services() == services
    assert system.agents() == agents
    assert system.dpe_pid() == dpe
    since = system.last_seq()
    os.kill(services["s2"], signal.SIGKILL)
    wait_until(lambda: system.services()["s2"] not in (None, services["s2"]), 30,
               "s2 restarted after the broker came back")
    system.wait_running()
    assert any(e.get("resource") == "s2" and e.get("state") == "failed"
               for e in system.events(since))


def test_broker_frozen_past_the_heartbeat_timeout(system: System) -> None:
    """Every agent falls silent at once: nothing fenced, nothing restarted. The DPE sees it
    either as a mass loss (half its assemblies silent at once), or first as its own beat not
    coming back through the broker (dpe_agent/echo.py), and then judges nobody: which rule
    fires first depends on where the freeze falls between beats."""
    start(system)
    services, agents = system.services(), system.agents()
    since = system.last_seq()
    system.broker.freeze()
    try:
        time.sleep(10)   # holds the freeze: heartbeat timeout 1.5 s, proton's idle timeout 8 s
        frozen = [_process_state(pid) for pid in system.broker.pids()]
    finally:
        system.broker.thaw()
    assert frozen and set(frozen) == {"T"}, f"the broker was not frozen: {frozen}"
    system.reconnect()
    system.wait_running()
    assert system.services() == services
    assert system.agents() == agents
    time.sleep(2)        # events of the outage reach the CPE late (resent or back-filled)
    assert not [dict(e.attrib) for e in system.events(since)
                if e.get("type") == "fencing" or e.get("state") == "failed"]


def _process_state(pid: int) -> str:
    """The state letter of /proc/<pid>/stat (``T``: stopped)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


@pytest.mark.parametrize("moment", ["at-once", "document-written", "dpe-spawned"])
def test_cped_killed_during_deployable_start(system: System, moment: str) -> None:
    """The start is resent (as a client that got no answer does): whatever the first got
    to, the deployable runs once, with one DPE, one agent and one copy of each service."""
    doc = deployable_xml(system.name, SERVICES)
    system.client.send_raw("pcloud.cpe", "deployable_start", doc)
    folder = system.state / "dpe" / system.name
    if moment == "document-written":
        wait_until(lambda: (folder / "deployable.xml").exists(), 30, "the document", step=0.005)
    elif moment == "dpe-spawned":
        wait_until(system.dped_pids, 30, "a dped", step=0.005)
    system.cped.kill9()
    system.cped.start(system.client)
    response = system.client.request("pcloud.cpe", "deployable_start", doc)
    if response.get("rc") != "0":
        assert response.find("error").get("code") == "duplicate_deployable"
    system.wait_running()
    wait_until(lambda: all(system.services().values()) and all(system.agents().values()),
               30, "one copy of every service")
    assert len(system.dped_pids()) == 1
    assert [system.agent_copies(asm) for asm in SERVICES] == [1, 1, 1]
    assert list(system.client.listing()) == [system.name]


def _slow_s1(name: str) -> str:
    return deployable_xml(name, SERVICES).replace(
        '"/></parameters></service></services></assembly><assembly name="a2"',
        f'"/><parameter name="start_wait" value="{SLOW_START}"/></parameters></service>'
        '</services></assembly><assembly name="a2"', 1)


def test_dpe_killed_while_a_recovery_is_in_flight(system: System) -> None:
    start(system, _slow_s1(system.name))
    services, dpe = system.services(), system.dpe_pid()
    since = system.last_seq()
    os.kill(services["s1"], signal.SIGKILL)
    wait_until(lambda: any(e.get("resource") == "s1" and e.get("state") == "restarting"
                           for e in system.events(since)), 30, "the restart of s1 to begin")
    os.kill(dpe, signal.SIGKILL)
    wait_until(lambda: system.dpe_pid() not in (None, dpe), 60, "the CPE to start a new DPE")
    system.wait_running()
    wait_until(lambda: system.services()["s1"] not in (None, services["s1"]), 30,
               "s1 running once")
    assert {k: v for k, v in system.services().items() if k != "s1"} == \
        {k: v for k, v in services.items() if k != "s1"}
    assert len(system.dped_pids()) == 1


def test_impostor_beats_do_not_keep_a_silent_assembly_alive(system: System) -> None:
    """a1's agent hangs while another login publishes beats for a1, with a1's own uuid: a1
    is lost, fenced and booted again (only a1's agent login counts)."""
    start(system)
    services, agent = system.services(), system.agent_pid("a1")
    uuid = next(a.get("uuid") for a in system.client.status(system.name)
                if a.get("name") == "a1")
    since = system.last_seq()
    sender = system.client.conn.create_sender(f"/topic/pcloud.heartbeat.{system.name}.a1")
    os.kill(agent, signal.SIGSTOP)

    def impostor_beats() -> bool:
        sender.send(Message(
            body=f'<heartbeat deployable="{system.name}" assembly="a1" uuid="{uuid}" '
                 f'seq="{time.monotonic_ns()}" started="2026-01-01T00:00:00.000Z" '
                 'interval="0.5" time="2026-01-01T00:00:00.000Z"/>',
            subject="heartbeat", properties={"pcloud.opcode": "heartbeat"},
            user_id=system.client.user_id))
        return any(e.get("type") == "fencing" and e.get("assembly") == "a1"
                   for e in system.events(since))

    try:
        wait_until(impostor_beats, 30, "a1 to be fenced despite the impostor", step=0.2)
    finally:
        if system.agent_pid("a1") == agent:
            os.kill(agent, signal.SIGCONT)
    system.wait_running()
    wait_until(lambda: system.services()["s1"] not in (None, services["s1"]), 30,
               "s1 running again in the new a1")
    events = system.events(since)
    assert any(e.get("type") == "assembly_state_change" and e.get("assembly") == "a1"
               and e.get("state") == "failed" for e in events)


def test_cped_paused_past_the_dpe_silence_limit_keeps_its_dpe(system: System) -> None:
    start(system)
    services, dpe = system.services(), system.dpe_pid()
    since = system.last_seq()
    system.cped.proc.send_signal(signal.SIGSTOP)
    try:
        time.sleep(8.0)              # longer than the CPE's 6 s DPE silence limit
    finally:
        system.cped.proc.send_signal(signal.SIGCONT)
    system.wait_running()
    # A recovery handled and persisted after the pause: the supervisor has ticked since.
    os.kill(services["s3"], signal.SIGKILL)
    wait_until(lambda: any(e.get("resource") == "s3" and e.get("state") == "running"
                           for e in system.events(since)), 30, "s3 restarted after the pause")
    assert system.dpe_pid() == dpe and system.dped_pids() == [dpe]
