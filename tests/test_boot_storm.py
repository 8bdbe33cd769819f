"""A boot storm is absorbed (issue 13): 200 real ``process`` sandboxes started at once.

Each assembly is a real sandbox with a real guest agent and one ``sleep`` resource, at the
deployment defaults (heartbeat every second, lost after 3 missed). Started all at once they
starve this host; the DPE must let them boot in turns (``dpe_agent/bootgate.py``) and wait
longer for first heartbeats while the host is starved, so that every one reaches
``running`` with no assembly fenced or failed on the way. The time from start to
``running`` is printed (no timed assertion: the host is shared).
"""

from __future__ import annotations

import time

import pytest
from support.dpe import DpeHarness, process_service, tag, unique

SANDBOXES = 200


@pytest.mark.slow
def test_two_hundred_sandboxes_started_at_once_all_run_without_fencing(tmp_path, broker):
    name, t = unique("storm"), tag()
    asms = "".join(f'<assembly name="a{i}" heartbeat_interval="1" heartbeat_misses="3">'
                   f'<services>{process_service("svc", f"sleep {t}")}</services></assembly>'
                   for i in range(SANDBOXES))
    h = DpeHarness(f'<deployable name="{name}" infrastructure="process"><assemblies>{asms}'
                   f'</assemblies></deployable>', tmp_path)
    try:
        began = time.monotonic()
        h.start()
        h.wait_running(timeout=1800)          # scaled by the wait
        took = time.monotonic() - began
        print(f"\n{SANDBOXES} sandboxes started at once: running after {took:.1f} s "
              f"(boot gate limit at the end: {h.dpe.boot_gate.limit:g})")
        assert not h.events.find(type="fencing")
        assert not h.events.find(type="assembly_state_change", state="failed")
        running = h.events.find(type="assembly_state_change", state="running")
        assert {e.assembly for e in running} == {f"a{i}" for i in range(SANDBOXES)}
        assert len(running) == SANDBOXES               # each came up once, none rebooted
    finally:
        h.close()
