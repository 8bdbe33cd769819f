"""The CPE's DPE heartbeat watch across its own broker outage (cpe_agent.supervisor).

After a broker restart the CPE's bus counts as connected as soon as the connection opens,
but ``bus_reconnected`` (which restarts the watch) runs later, on the bus's dispatcher
thread. A supervisor tick in between used to judge every DPE on its last heartbeat from
before the outage and kill them all (a soak saw all three DPEs killed after 4 of 7 broker
restarts, each costing a DPE restart and an adoption). The supervisor now restarts the watch
itself when it sees the bus back. A real supervisor, store and child process; the clock and
the bus's ``connected`` are the supervisor's own injection points.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from cpe_agent.store import Store
from cpe_agent.supervisor import FIRST_HEARTBEAT_GRACE, DpeProcess, Supervisor

NAME = "rc1"


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def watched(tmp_path: Path) -> Iterator[tuple[Supervisor, Clock, list[bool], DpeProcess]]:
    store = Store(tmp_path / "cpe.sqlite")
    store.start(NAME, "uuid-rc1", f'<deployable name="{NAME}"/>', "running")
    clock = Clock()
    supervisor = Supervisor(store, tmp_path, "amqp://127.0.0.1:1", dped_command=["false"],
                            clock=clock)
    connected = [True]
    supervisor.bus_connected = lambda: connected[0]
    child = subprocess.Popen(["sleep", "300"])   # stands for the running DPE
    dpe = DpeProcess(NAME, pid=child.pid, popen=child, since=0.0)
    supervisor._dpes[NAME] = dpe
    try:
        yield supervisor, clock, connected, dpe
    finally:
        child.kill()
        child.wait()
        store.close()


def test_no_dpe_killed_when_a_tick_sees_the_bus_back_before_the_reconnect_callback(watched):
    supervisor, clock, connected, dpe = watched
    clock.now = 100.0
    supervisor.heartbeat(NAME, 1.0, "s1")
    supervisor.tick()
    connected[0] = False               # the broker is killed
    for clock.now in (101.0, 105.0, 108.0):
        supervisor.tick()
    connected[0] = True                # back; bus_reconnected has not run yet
    clock.now = 108.2
    supervisor.tick()
    assert dpe.alive() and dpe.pid is not None
    # The DPE reconnects on its own back-off, late on a busy host: a new DPE's grace.
    clock.now = 108.2 + FIRST_HEARTBEAT_GRACE - 1
    supervisor.tick()
    assert dpe.alive() and dpe.pid is not None
    # ... and the callback arriving late changes nothing.
    supervisor.bus_reconnected()
    supervisor.heartbeat(NAME, 1.0, "s1")
    supervisor.tick()
    assert dpe.alive() and dpe.pid is not None


def test_a_dpe_silent_after_the_outage_is_still_killed(watched):
    supervisor, clock, connected, dpe = watched
    child = dpe.popen
    clock.now = 100.0
    supervisor.heartbeat(NAME, 1.0, "s1")
    connected[0] = False
    supervisor.tick()
    clock.now = 108.0
    connected[0] = True
    supervisor.tick()
    clock.now = 108.0 + FIRST_HEARTBEAT_GRACE + 1   # never beat again: hung
    supervisor.tick()
    assert child.wait(5) == -9
