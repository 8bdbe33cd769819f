"""Shared fixtures: one real RabbitMQ broker per test session, and a started Bus.

``broker`` (session): with ``PCLOUD_BROKER_URL`` set, that broker is used as is (with
``PCLOUD_BROKER_ADMIN`` naming its administration, see docs/security.md) and tests
that kill or restart it are skipped. Otherwise a private node is started with
``pcloud.broker`` in a temporary state dir on free ports (so several test sessions can run
side by side) and stopped at the end of the session, even on failure. While it runs,
``PCLOUD_BROKER_URL`` points at it so that daemons spawned by tests find it.

``broker_url`` (module): that broker's URL.
``bus`` (function): a started ``pcloud.bus.Bus`` on that broker, closed afterwards.
``wait_until`` (function): poll a condition with a deadline; tests never assert on sleeps.
Deadlines follow the work: the broker's start is timed and sets the session's slowness
factor (tests/support/waiting.py), which stretches every deadline of a wait.

Other modules add their own fixtures in their own files; keep this one small.
"""

from __future__ import annotations

import atexit
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from support import waiting
from support.dpe import harness  # noqa: F401  (the DPE harness fixture, for every module)
from support.waiting import measured_slowness, set_slowness, slowness

from guest_agent.reaper import Reaper, become_subreaper, shared, stop_shared
from pcloud import broker as private_broker
from pcloud.bus import Bus


class TestBroker:
    """The session's broker; the control methods need a private node."""

    __test__ = False  # not a test class, despite the name

    def __init__(self, url: str, state_dir: Path | None = None,
                 ports: tuple[int, int, int] | None = None) -> None:
        self.url = url
        self.state_dir = state_dir
        self.ports = ports

    @property
    def controllable(self) -> bool:
        return self.state_dir is not None

    def require_control(self) -> Path:
        """Skip the calling test when the broker is external (it cannot be killed here)."""
        if self.state_dir is None:
            pytest.skip("PCLOUD_BROKER_URL is set: the test needs a private broker it can "
                        "kill and restart (unset PCLOUD_BROKER_URL to run it)")
        return self.state_dir

    def start(self) -> str:
        state = self.require_control()
        port, dist, epmd = self.ports
        return private_broker.start(state, port=port, dist_port=dist, epmd_port=epmd)

    def stop(self) -> None:
        private_broker.stop(self.require_control())

    def restart(self) -> str:
        """Clean stop and start again (same URL)."""
        self.stop()
        return self.start()

    def kill9(self) -> None:
        """SIGKILL the node, as a crash would; call ``start()`` to bring it back."""
        private_broker.kill9(self.require_control())

    def freeze(self) -> None:
        """SIGSTOP the node (a hung broker); ``thaw()`` resumes it."""
        self._signal(signal.SIGSTOP)

    def thaw(self) -> None:
        self._signal(signal.SIGCONT)

    def _signal(self, sig: int) -> None:
        state = self.require_control()
        for pid in private_broker.node_pids(state):
            os.kill(pid, sig)

    def pids(self) -> list[int]:
        """Processes of the private node (beam, helpers, its epmd)."""
        return private_broker.node_pids(self.require_control())


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestBroker]:
    external = os.environ.get("PCLOUD_BROKER_URL")
    if external:
        set_slowness(1.0)
        yield TestBroker(external)
        return
    state = tmp_path_factory.mktemp("pcloud-broker")
    ports = (private_broker.free_port(), private_broker.free_port(), private_broker.free_port())
    atexit.register(private_broker.stop, state)  # in case the session dies before teardown
    began = time.monotonic()
    try:
        url = private_broker.start(state, port=ports[0], dist_port=ports[1], epmd_port=ports[2])
    except private_broker.NotInstalled as exc:
        pytest.skip(str(exc))
    took = time.monotonic() - began
    set_slowness(measured_slowness(took))
    _pace.append(f"broker started in {took:.1f} s: deadlines scaled {slowness():.2g}x")
    os.environ["PCLOUD_BROKER_URL"] = url
    os.environ["PCLOUD_BROKER_ADMIN"] = str(state)   # daemons mint identities on this node
    try:
        yield TestBroker(url, state, ports)
    finally:
        os.environ.pop("PCLOUD_BROKER_URL", None)
        os.environ.pop("PCLOUD_BROKER_ADMIN", None)
        private_broker.stop(state)


_pace: list[str] = []


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Say how much this run's deadlines were stretched, to read a slow run's results by."""
    for line in _pace:
        terminalreporter.write_line(f"host pace: {line}")


@pytest.fixture(scope="module")
def broker_url(broker: TestBroker) -> str:
    """The session broker's URL, for modules that hand only a URL to what they start."""
    return broker.url


@pytest.fixture
def bus(broker: TestBroker, request: pytest.FixtureRequest) -> Iterator[Bus]:
    client = Bus(broker.url, name=f"test-{request.node.name[:40]}").start(timeout=30)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def wait_until() -> Callable[..., object]:
    """``wait_until(predicate, timeout=10, what=...)``: support.waiting's, as a fixture."""
    return waiting.wait_until


@pytest.fixture(scope="module")
def reaper() -> Iterator[Reaper]:
    """The guest agent's reaper, borrowed by this test process for one module, then given back.

    Left running, it would collect the exit statuses of later tests' subprocesses, and the
    subreaper flag would make this process the parent of their orphans.
    """
    become_subreaper()
    yield shared()
    stop_shared()
    become_subreaper(False)
