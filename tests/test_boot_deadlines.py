"""A slow boot that shows signs of life is waited for; a silent one is fenced on time.

Two assemblies under a real ``dped`` with the process driver and a 5 s boot timeout, each
agent late: ``busy`` computes for 7 s before the agent starts (its CPU time moves: the
driver's ``boot_progress``), ``silent`` sleeps 7 s (nothing moves). The busy one's deadline is
extended and it comes up without a fence; the silent one is declared lost at its deadline.
"""

from __future__ import annotations

import sys
from pathlib import Path

from dpe_agent.daemon import Dpe, run_in_thread
from dpe_agent.drivers.process import ProcessDriver
from pcloud.bus import Bus
from pcloud.deployable import Deployable
from tests.test_dpe_daemon import Events, assembly, deployable, process_service, tag, unique

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
    bus = Bus(url=broker.url, name=f"test-{name}").start()
    events = Events(bus, name)
    dpe = Dpe(Deployable.from_xml(xml), tmp_path, broker_url=broker.url,
              driver=LateStarts(agent_argv=[str(late_agent)], use_mount_namespace=False))
    thread = run_in_thread(dpe)
    try:
        lost = events.wait(30, type="assembly_state_change", assembly="silent", state="failed")
        assert "heartbeat" in lost.reason or "boot" in lost.reason, lost.reason
        events.wait(60, type="resource_state_change", assembly="busy", resource="svc",
                    state="running")
        assert not events.find(type="assembly_state_change", assembly="busy", state="failed")
        assert not events.find(type="fencing", assembly="busy"), events.snapshot()
    finally:
        try:
            bus.call(f"pcloud.dpe.{name}", "deployable_stop", f'<deployable name="{name}"/>',
                     timeout=60)
        finally:
            thread.join(60)
            events.sub.cancel()
            bus.close()
