"""Deadlines judged fairly: a slow boot that shows signs of life is waited for, a silent one
is fenced on time; a DPE whose own bus thread is behind judges no silence.

Two assemblies under a real ``dped`` with the process driver and a 5 s boot timeout, each
agent late: ``busy`` computes for 7 s before the agent starts (its CPU time moves: the
driver's ``boot_progress``), ``silent`` sleeps 7 s (nothing moves). The busy one's deadline is
extended and it comes up without a fence; the silent one is declared lost at its deadline.
"""

from __future__ import annotations

import sys
import time
from contextlib import closing
from pathlib import Path

from support.dpe import assembly, deployable, dpe_running, process_service, tag, unique
from support.events import Events

from dpe_agent.daemon import Dpe
from dpe_agent.drivers.process import ProcessDriver
from pcloud.bus import Bus
from pcloud.deployable import Deployable

LATE = 7.0               # seconds each agent is late, past its 5 s boot timeout
AGENT = Path(sys.executable).with_name("pcloud-agent")
LATE_AGENT = f"""#!{sys.executable}
import os, sys, time
silent, end = "silent" in sys.argv, time.monotonic() + {LATE}    # its --assembly
while time.monotonic() < end:
    if silent:
        time.sleep(end - time.monotonic())
os.execv("{AGENT}", ["{AGENT}", *sys.argv[1:]])
"""


def test_a_lively_boot_is_waited_for_and_a_silent_one_is_not(broker, tmp_path, monkeypatch):
    monkeypatch.setattr("dpe_agent.detection.host_overloaded", lambda: False)
    late_agent = tmp_path / "late-agent"
    late_agent.write_text(LATE_AGENT)
    late_agent.chmod(0o755)

    class LateStarts(ProcessDriver):
        """Each assembly's agent late: ``busy`` computing, ``silent`` asleep."""

        boot_timeout = 5.0

    name, t = unique(), tag()
    xml = deployable(name, assembly("busy", process_service("svc", f"sleep {t}1"))
                     + assembly("silent", process_service("svc", f"sleep {t}2")))
    dpe = Dpe(Deployable.from_xml(xml), tmp_path, broker_url=broker.url,
              driver=LateStarts(agent_argv=[str(late_agent)], use_mount_namespace=False))
    with (Bus(url=broker.url, name=f"test-{name}") as bus, closing(Events(bus, name)) as events,
          dpe_running(dpe, bus)):
        lost = events.wait(30, type="assembly_state_change", assembly="silent", state="failed")
        assert "heartbeat" in lost.reason or "boot" in lost.reason, lost.reason
        events.wait(60, type="resource_state_change", assembly="busy", resource="svc",
                    state="running")
        assert not events.find(type="assembly_state_change", assembly="busy", state="failed")
        assert not events.find(type="fencing", assembly="busy"), events.snapshot()


def test_a_dpe_whose_bus_thread_is_stuck_judges_no_silence(broker, tmp_path, monkeypatch):
    """The DPE's own bus thread stuck for 6 s (as behind a backlog of messages or on a
    starved host) while its one assembly beats every 0.5 s (lost after 2 s): the silence is
    the DPE's, not the assembly's; nothing is failed or fenced, the assembly stays running."""
    monkeypatch.setattr("dpe_agent.detection.host_overloaded", lambda: False)
    name, t = unique(), tag()
    xml = deployable(name, assembly("a", process_service("svc", f"sleep {t}1")))
    dpe = Dpe(Deployable.from_xml(xml), tmp_path, broker_url=broker.url)
    with (Bus(url=broker.url, name=f"test-{name}") as bus, closing(Events(bus, name)) as events,
          dpe_running(dpe, bus)):
        events.wait(60, type="resource_state_change", assembly="a", state="running")
        mark = events.last_seq()
        dpe.bus._running().submit(time.sleep, 6.0).result(30)     # the bus thread, stuck
        time.sleep(3.0)                     # beats flow again; deadlines would have passed
        assert not events.find(type="assembly_state_change", assembly="a", state="failed",
                               after=mark), events.snapshot()
        assert not events.find(type="fencing", after=mark)
        assert dpe.state("a") == "running"
