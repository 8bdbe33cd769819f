"""A dead assembly is known at once: the driver's death report, not heartbeats ``interval ×
misses`` later. The decision as a table; then a real ``dped`` with the process driver, whose
sandbox is SIGKILLed once as booted by it and once after the dped was replaced (adoption);
and boots that fail, which back off and escalate like lost assemblies."""

from __future__ import annotations

import os
import signal
import sys
import time
from contextlib import closing
from pathlib import Path

import pytest
from lxml import etree
from support.dpe import (
    assembly,
    deployable,
    dpe_running,
    process_service,
    tag,
    unique,
)
from support.events import Events
from support.waiting import wait_until

from dpe_agent.daemon import Dpe, run_in_thread
from dpe_agent.deaths import act_on_death
from dpe_agent.drivers import PowerState
from dpe_agent.drivers.base import AssemblySpec
from dpe_agent.drivers.process import ProcessDriver
from dpe_agent.heartbeats import Liveness
from pcloud.bus import Bus
from pcloud.deployable import Deployable

ALIVE, OFF = Liveness.ALIVE, PowerState.STOPPED


@pytest.mark.parametrize("stopping, operation, liveness, power, acted", [
    (False, None, ALIVE, OFF, True),                     # a running assembly died
    (False, "start", Liveness.BOOTING, OFF, True),       # a boot died
    (False, None, ALIVE, PowerState.RUNNING, False),     # a late report: it runs again
    (False, None, ALIVE, PowerState.UNKNOWN, False),     # cannot tell: heartbeats will
    (False, None, Liveness.LOST, OFF, False),            # already being recovered
    (False, None, None, OFF, False),                     # not watched: stopped or removed
    (False, "stop", ALIVE, OFF, False),                  # our own stop
    (False, "restart", ALIVE, OFF, False),               # our own restart
    (True, None, ALIVE, OFF, False),                     # the deployable is stopping
])
def test_when_a_reported_death_is_acted_on(stopping, operation, liveness, power, acted):
    assert act_on_death(stopping=stopping, operation=operation, liveness=liveness,
                        power=power) is acted


INTERVAL, MISSES = 5, 3          # a heartbeat loss would take 15 s to notice


def _kill_and_see_restart(h, asm: str) -> int:
    """SIGKILL the sandbox: failed (reported by the driver), fenced, booting, running, in
    that order, the boot begun well before a heartbeat loss could have been noticed."""
    mark = h.events.last_seq()
    killed = time.time()
    os.kill(h.sandbox_pid(asm), signal.SIGKILL)
    failed = h.events.wait(type="assembly_state_change", assembly=asm, state="failed",
                           after=mark)
    assert "signal 9" in failed.reason or "exited" in failed.reason, failed.reason
    assert "reported by the process driver" in failed.reason, failed.reason
    fenced = h.events.wait(type="fencing", assembly=asm, after=mark)
    booting = h.events.wait(type="assembly_state_change", assembly=asm, state="starting",
                            after=mark)
    running = h.events.wait(type="resource_state_change", assembly=asm, state="running",
                            after=mark)
    assert failed.seq < fenced.seq < booting.seq < running.seq
    # generous for a loaded host, yet half of what heartbeats alone would need
    assert booting.time.timestamp() - killed < INTERVAL * MISSES / 2
    return mark


def test_killed_sandbox_is_restarted_without_waiting_for_heartbeats(harness):
    name, t = unique(), tag()
    hb = f'heartbeat_interval="{INTERVAL}" heartbeat_misses="{MISSES}"'
    xml = deployable(name, assembly("a", process_service("svc", f"sleep {t}1"))
                     + assembly("b", process_service("svc", f"sleep {t}2")))
    xml = xml.replace('heartbeat_interval="0.5" heartbeat_misses="4"', hb)
    h = harness(xml, subprocess_mode=True)
    h.wait_running(timeout=90)
    h.wait_running(timeout=90, after=_kill_and_see_restart(h, "a"))

    h.kill_dpe()                                   # a new dped adopts the running sandboxes
    h.start()
    wait_until(lambda: _answers(h), timeout=60, what="the new dped to answer")
    mark = _kill_and_see_restart(h, "b")
    h.wait_running(timeout=90, after=mark)
    assert not h.events.find(type="assembly_state_change", assembly="a", state="failed",
                             after=mark)


def _answers(h) -> bool:
    try:
        h.status()
        return True
    except Exception:
        return False


def test_failed_boots_back_off_escalate_and_fail_the_deployable_with_the_cause(broker,
                                                                              tmp_path):
    """A driver whose start fails: each failure is counted like a lost assembly (no tight
    retry loop); the second within the window gives up, and the deployable is failed with
    the infrastructure's own message in its event and its status."""
    name = unique()
    xml = deployable(name, assembly("a", process_service("svc", "sleep 1"),
                                    extra='escalation_failures="2" escalation_period="600"'),
                     extra='escalation_failures="1" escalation_period="600"')
    # no unshare in between: the driver's start itself fails (exec of a missing program)
    driver = ProcessDriver(agent_argv=[str(tmp_path / "no-such-agent")],
                           use_pid_namespace=False, use_mount_namespace=False)
    dpe = Dpe(Deployable.from_xml(xml), tmp_path, broker_url=broker.url, driver=driver)
    with (Bus(url=broker.url, name=f"test-{name}") as bus, closing(Events(bus, name)) as events,
          dpe_running(dpe, bus)):
        failed = events.wait(60, type="deployable_state_change", state="failed")
        assert "start failed" in failed.reason and "no-such-agent" in failed.reason, \
            failed.reason
        status = bus.call(f"pcloud.dpe.{name}", "deployable_status",
                          f'<deployable name="{name}"/>')
        assert "no-such-agent" in status.get("reason", ""), etree.tostring(status)
        boots = events.find(type="assembly_state_change", assembly="a", state="starting")
        assert len(boots) == 2, [(e.state, e.reason) for e in events.snapshot()]
        assert events.find(type="escalation", assembly="a")
        assert not dpe.violations, dpe.violations


def test_a_late_failure_from_before_a_loss_is_not_charged_to_the_next_boot(broker, tmp_path):
    """A start launched on the agent that died fails late (its call timed out), after the
    assembly was booted again and is online: that result says nothing about the resource in
    the new boot, which stays pending. The same failure from the new boot is charged."""
    from dpe_agent.cib import rsc_id
    from dpe_agent.executor import ActionResult
    from dpe_agent.graph import Action
    from pcloud.states import ResourceState as R

    xml = deployable("late", assembly("web", process_service("svc", "sleep 1")))
    dpe = Dpe(Deployable.from_xml(xml), tmp_path, broker_url=broker.url,
              driver=ProcessDriver())             # not run: its handler is called directly
    start = Action(id=1, kind="rsc_op", operation="start", operation_key="web.svc_start_0",
                   resource=rsc_id("web", "svc"), node="web")
    failure = ActionResult(rc=1, reason="no answer from the agent", finished=time.time())
    dpe.observed.set_online("web")                  # the next boot is online
    launched_in = dpe.losses.get("web", 0)
    dpe.losses["web"] = launched_in + 1             # lost since the start was launched
    dpe.states[("web", "svc")] = R.PENDING          # as the loss left it

    dpe._handle_action_done(None, 1, start, failure, -1, launched_in)
    assert dpe.state("web", "svc") == R.PENDING
    assert not dpe.violations, dpe.violations

    dpe.states[("web", "svc")] = R.STARTING         # started again in the new boot
    dpe._handle_action_done(None, 2, start, failure, -1, dpe.losses["web"])
    assert dpe.state("web", "svc") == R.FAILED
    assert not dpe.violations, dpe.violations


AGENT_DELAY = 14.0       # a boot slower than the 10 s an adopted running assembly is given


def test_an_assembly_adopted_while_still_booting_is_given_its_boot_timeout(broker, tmp_path,
                                                                          monkeypatch):
    """The DPE is replaced while an assembly boots (its agent takes 14 s to start): the new
    DPE adopts the running sandbox with the boot's timeout, not the short deadline of an
    assembly that was running, so the late first heartbeat is waited for: nothing fenced."""
    # a loaded host would stretch any boot's deadline anyway: that is not what is tested
    monkeypatch.setattr("dpe_agent.detection.host_overloaded", lambda: False)
    slow_agent = tmp_path / "slow-agent"
    slow_agent.write_text(f"#!/bin/sh\nsleep {AGENT_DELAY:g}\n"
                          f'exec {Path(sys.executable).with_name("pcloud-agent")} "$@"\n')
    slow_agent.chmod(0o755)
    name = unique()
    xml = deployable(name, assembly("a", process_service("svc", f"sleep {tag()}1")))

    def dpe() -> Dpe:
        return Dpe(Deployable.from_xml(xml), tmp_path, broker_url=broker.url,
                   driver=ProcessDriver(agent_argv=[str(slow_agent)]))

    first = dpe()
    with Bus(url=broker.url, name=f"test-{name}") as bus, closing(Events(bus, name)) as events:
        thread = run_in_thread(first)
        try:
            events.wait(30, type="assembly_state_change", assembly="a", state="starting")
            sandbox = AssemblySpec(name, "a", "u", broker.url,
                                   tmp_path / "dpe" / name / "assemblies" / "a")
            wait_until(lambda: ProcessDriver().sandbox_pid(sandbox), timeout=30,
                       what="the sandbox to be up")
        finally:
            first.queue.put(("signal", signal.SIGTERM))     # exits, leaving the boot running
            thread.join(30)
        assert not thread.is_alive()
        with dpe_running(dpe(), bus):                       # adopts the boot under way
            events.wait(60, type="resource_state_change", resource="svc", state="running")
            assert not events.find(type="fencing", assembly="a"), events.snapshot()
            assert not events.find(type="assembly_state_change", assembly="a", state="failed")
