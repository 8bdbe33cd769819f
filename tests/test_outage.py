"""A clean broker outage longer than every heartbeat timeout, with real cped, dped and agents.

What the user saw: the CPE killed its DPEs for "not heartbeating" while the broker was down,
the respawned DPEs could not connect and died again, and once the broker was back a healthy
service (whose ``monitor_interval`` a reload had changed) was stopped and started. After an
outage nothing that ran may have been restarted: same DPE, same agents, same services, and no
resource event at all.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.cpe import deployable_xml, running_cped, service_pid, unique
from support.system import System
from support.waiting import wait_until

SERVICES = {"app": ["api", "web"], "db": ["sql"]}
OUTAGE = 12.0   # > the CPE's DPE silence limit (6 s) and every agent's heartbeat timeout


class Outage(System):
    """cped with one running deployable of ``SERVICES`` on the session's private broker."""

    def services(self) -> dict[str, int | None]:
        return {svc: service_pid(self.state, self.name, asm, svc)
                for asm, svcs in SERVICES.items() for svc in svcs}

    def running(self) -> bool:
        try:
            status = self.client.status(self.name)
        except Exception:
            return False
        return status.get("state") == "running" and all(
            r.get("state") == "running" for r in status.iter("resource"))


@pytest.fixture
def outage(broker, tmp_path: Path) -> Iterator[Outage]:
    broker.require_control()
    with running_cped(tmp_path / "state", broker.url) as (cped, client):
        system = Outage(broker, cped, client, unique("out"))
        try:
            yield system
        finally:
            if not broker.pids():
                broker.start()
                system.reconnect()


def _document(name: str, api_interval: str) -> str:
    xml = deployable_xml(name, SERVICES)
    marker = '<service name="api" class="process" monitor_interval="1">'
    assert marker in xml
    return xml.replace(marker, f'<service name="api" class="process" '
                               f'monitor_interval="{api_interval}">')


def _settle(system: Outage) -> None:
    system.reconnect()
    wait_until(system.running, 90, "the deployable running again after the outage")
    time.sleep(5)   # a wrong restart would follow the first re-probes within this


def _no_restart(system: Outage, since: int, services: dict[str, int | None], dpe: int) -> None:
    """The same services, no resource or assembly event, and ``dpe`` still the only DPE
    (the CPE killed none for not heartbeating)."""
    assert system.services() == services
    moved = [dict(e.attrib) for e in system.events(since)
             if e.get("type") in ("resource_state_change", "assembly_state_change", "fencing")]
    assert moved == []
    assert system.dped_pids() == [dpe] and system.dpe_pid() == dpe


def _start_reloaded(system: Outage) -> tuple[int, dict[str, int | None]]:
    system.client.call("deployable_start", _document(system.name, "2"))
    wait_until(system.running, 60, "the deployable running")
    result = system.client.call("deployable_reload", _document(system.name, "3"))
    assert result.get("state") == "running"
    wait_until(lambda: any(e.get("type") == "config_reload" for e in system.events(0)), 20,
               "the reload applied by the DPE")
    wait_until(system.running, 60, "the deployable running after the reload")
    services = system.services()
    assert all(services.values())
    return system.last_seq(), services


def test_outage_kills_no_dpe_and_restarts_nothing(outage: Outage) -> None:
    since, services = _start_reloaded(outage)
    dpe = outage.dpe_pid()
    outage.broker.stop()
    time.sleep(OUTAGE)   # holds the outage; nothing is asserted on time
    outage.broker.start()
    _settle(outage)
    _no_restart(outage, since, services, dpe)


def test_dpe_respawned_during_an_outage_waits_and_restarts_nothing(outage: Outage) -> None:
    """The DPE dies while the broker is down: the CPE starts another at once (a dead process
    is not silence), which waits for the broker and then adopts everything as it is."""
    since, services = _start_reloaded(outage)
    dpe = outage.dpe_pid()
    outage.broker.stop()
    os.kill(dpe, signal.SIGKILL)
    wait_until(lambda: outage.dpe_pid() not in (None, dpe) and outage.dped_pids(), 30,
               "a new DPE started during the outage")
    fresh = outage.dpe_pid()
    time.sleep(OUTAGE)
    assert outage.dped_pids() == [fresh]   # it waited for the broker, it did not die
    outage.broker.start()
    _settle(outage)
    _no_restart(outage, since, services, fresh)
    log = (outage.state / "dpe" / outage.name / "dped.log").read_text(errors="replace")
    assert "ERROR" not in log     # the dropped connection is a warning, not an error


def test_a_clean_broker_stop_fences_no_lone_assembly(outage: Outage) -> None:
    """With one assembly there is no mass loss to see. RabbitMQ, stopping cleanly, ends every
    session seconds before it closes the connections: the DPE's links are gone from that
    moment, so the silence that follows must not fence the assembly (a new user saw
    ``pcloud-broker stop`` kill every one-assembly deployable)."""
    outage.client.call("deployable_start", deployable_xml(outage.name, {"solo": ["api"]}))
    wait_until(outage.running, 60, "the one-assembly deployable running")
    since, api = outage.last_seq(), service_pid(outage.state, outage.name, "solo", "api")
    outage.broker.stop()
    time.sleep(OUTAGE)   # holds the outage; nothing is asserted on time
    outage.broker.start()
    _settle(outage)
    assert service_pid(outage.state, outage.name, "solo", "api") == api
    moved = [dict(e.attrib) for e in outage.events(since)
             if e.get("type") in ("resource_state_change", "assembly_state_change", "fencing")]
    assert moved == []
