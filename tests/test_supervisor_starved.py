"""The CPE's DPE heartbeat watch on a starved host (cpe_agent.supervisor, issue 13).

A DPE whose beats stop while its process keeps computing on an overloaded host is behind,
not hung: killing it would add a DPE start to the storm. It is waited for up to
``STARVED_SILENCE``; a silent DPE that does not compute, or one on a host that is not
overloaded, is killed on time as before. A real supervisor, store and child process (a busy
loop, or a sleep); the clock and the host's load are the supervisor's injection points.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cpe_agent.store import Store
from cpe_agent.supervisor import FIRST_HEARTBEAT_GRACE, STARVED_SILENCE, DpeProcess, Supervisor

NAME = "sv1"
BUSY = [sys.executable, "-c", "while True: pass"]
IDLE = ["sleep", "300"]


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def watch(tmp_path: Path, argv: list[str], overloaded: bool
          ) -> tuple[Supervisor, Clock, DpeProcess, Store]:
    store = Store(tmp_path / "cpe.sqlite")
    store.start(NAME, "uuid-sv1", f'<deployable name="{NAME}"/>', "running")
    clock = Clock()
    supervisor = Supervisor(store, tmp_path, "amqp://127.0.0.1:1", dped_command=["false"],
                            clock=clock)
    supervisor.host_overloaded = lambda: overloaded
    child = subprocess.Popen(argv)                  # stands for the running DPE
    dpe = DpeProcess(NAME, pid=child.pid, popen=child, since=0.0)
    supervisor._dpes[NAME] = dpe
    return supervisor, clock, dpe, store


@pytest.fixture
def make(tmp_path: Path) -> Iterator:
    made: list[tuple[subprocess.Popen, Store]] = []

    def make_watch(argv: list[str], overloaded: bool):
        supervisor, clock, dpe, store = watch(tmp_path, argv, overloaded)
        made.append((dpe.popen, store))
        clock.now = FIRST_HEARTBEAT_GRACE + 10      # past the CPE's own start-up grace
        supervisor.heartbeat(NAME, 1.0, "s1")
        return supervisor, clock, dpe

    yield make_watch
    for child, store in made:
        child.kill()
        child.wait()
        store.close()


def silence(supervisor: Supervisor, clock: Clock, seconds: float) -> None:
    """``seconds`` of the fake clock without a beat, a tick a second; real time passes
    between ticks so that a busy child's CPU time moves."""
    end = clock.now + seconds
    while clock.now < end:
        time.sleep(0.03)
        clock.now += 1.0
        supervisor.tick()


def test_a_starved_dpe_that_computes_is_waited_for_then_killed(make):
    supervisor, clock, dpe = make(BUSY, overloaded=True)
    child = dpe.popen
    silence(supervisor, clock, 10)
    assert child.poll() is None and dpe.pid == child.pid, "killed while it computed"
    silence(supervisor, clock, STARVED_SILENCE)
    assert child.wait(5) == -9


def test_a_silent_dpe_that_does_not_compute_is_killed_on_time(make):
    supervisor, clock, dpe = make(IDLE, overloaded=True)
    child = dpe.popen
    silence(supervisor, clock, 10)
    assert child.wait(5) == -9


def test_a_silent_dpe_on_a_host_not_overloaded_is_killed_on_time(make):
    supervisor, clock, dpe = make(BUSY, overloaded=False)
    child = dpe.popen
    silence(supervisor, clock, 10)
    assert child.wait(5) == -9


def test_a_starting_dpe_that_computes_on_a_starved_host_is_waited_for(tmp_path: Path):
    """No first beat within the 20 s grace, but starting (computing) on a starved host."""
    supervisor, clock, dpe, store = watch(tmp_path, BUSY, overloaded=True)
    child = dpe.popen
    try:
        silence(supervisor, clock, FIRST_HEARTBEAT_GRACE + 10)
        assert child.poll() is None and dpe.pid == child.pid, "killed while it started"
        silence(supervisor, clock, STARVED_SILENCE)
        assert child.wait(5) == -9
    finally:
        child.kill()
        child.wait()
        store.close()
