"""The DPE harness: one deployable under a DPE (in-process or a ``dped`` subprocess) on the
session broker, with its events collected from before it starts, and the builders of small
``process`` deployables (``deployable``/``assembly``/``process_service``, ``tag``).

``dpe_running`` runs a DPE a test made itself and stops its deployable afterwards.
``harness`` (a fixture: import it into the test module) makes harnesses and closes them
after the test: the deployable is stopped, any sandbox left fenced, and no process of it may
survive.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from lxml import etree

from dpe_agent.daemon import Dpe, run_in_thread
from dpe_agent.drivers.base import AssemblySpec
from dpe_agent.drivers.process import ProcessDriver, _descendants
from pcloud.bus import Bus
from pcloud.deployable import Deployable
from pcloud.events import Event
from support.events import Events


def broker_url() -> str:
    """The session broker's URL (the ``broker`` fixture sets it for a private node)."""
    return os.environ["PCLOUD_BROKER_URL"]


def unique(prefix: str = "t") -> str:
    return f"{prefix}{uuid.uuid4().hex[:8]}"


def pgrep(pattern: str) -> list[int]:
    out = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True).stdout
    return [int(p) for p in out.split() if int(p) != os.getpid()]


class DpeHarness:
    """One deployable under a DPE, in-process (thread) or as a ``dped`` subprocess."""

    def __init__(self, xml: str, state_dir: Path, subprocess_mode: bool = False) -> None:
        self.dep = Deployable.from_xml(xml)
        self.name = self.dep.name
        self.state_dir = state_dir
        self.doc = state_dir / f"{self.name}.xml"
        self.doc.write_text(self.dep.to_xml())
        os.environ["PCLOUD_BROKER_URL"] = broker_url()
        self.bus = Bus(url=broker_url(), name=f"test-{self.name}").start()
        self.events = Events(self.bus, self.name)
        self.subprocess_mode = subprocess_mode
        self.dpe: Dpe | None = None
        self.thread: threading.Thread | None = None
        self.proc: subprocess.Popen | None = None

    def start(self) -> DpeHarness:
        if self.subprocess_mode:
            log = open(self.state_dir / f"dped-{self.name}.log", "ab")
            self.proc = subprocess.Popen(
                [str(Path(sys.executable).with_name("dped")), "--deployable", str(self.doc),
                 "--state-dir", str(self.state_dir), "--foreground"],
                stdout=log, stderr=log, env=dict(os.environ, PCLOUD_BROKER_URL=broker_url()))
        else:
            self.dpe = Dpe(self.dep, self.state_dir, broker_url=broker_url())
            self.thread = run_in_thread(self.dpe)
        return self

    def call(self, method: str, body: str = "", timeout: float = 10.0):
        body = body or f'<deployable name="{self.name}"/>'
        return self.bus.call(f"pcloud.dpe.{self.name}", method, body, timeout=timeout)

    def status(self) -> etree._Element:
        return self.call("deployable_status")

    def wait_running(self, timeout: float = 60.0, after: int = 0) -> Event:
        return self.events.wait(timeout, type="deployable_state_change", state="running",
                                after=after)

    def spec(self, asm: str) -> AssemblySpec:
        return AssemblySpec(self.name, asm, "u", broker_url(),
                            self.state_dir / "dpe" / self.name / "assemblies" / asm)

    def sandbox_pid(self, asm: str) -> int:
        path = self.spec(asm).state_dir / "sandbox.pid"
        return int(json.loads(path.read_text())["pid"])

    def agent_pid(self, asm: str) -> int:
        return ProcessDriver().agent_pid(self.spec(asm))

    def tree(self) -> list[int]:
        pids = []
        for asm in self.dep.assemblies:
            pid = ProcessDriver().sandbox_pid(self.spec(asm.name))
            if pid:
                pids += [pid, *_descendants(pid)]
        return pids

    def kill_dpe(self) -> None:
        """SIGKILL the dped subprocess (subprocess mode only)."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)
        self.proc = None

    def close(self) -> None:
        """Stop the deployable, fence leftovers, and check nothing of it still runs."""
        try:
            if (self.thread and self.thread.is_alive()) or self.proc:
                self.call("deployable_stop", timeout=10.0)
                if self.thread:
                    self.thread.join(60)
                if self.proc:
                    self.proc.wait(60)
        except Exception:
            if self.dpe is not None:
                self.dpe.queue.put(("signal", 15))
            if self.proc is not None:
                self.proc.kill()
                self.proc.wait(10)
        finally:
            driver = ProcessDriver()
            for asm in self.dep.assemblies:
                driver.fence(self.spec(asm.name))
            self.events.close()
            self.bus.close()
        if self.dpe is not None:
            assert not self.dpe.violations, self.dpe.violations
        leftovers = pgrep(str(self.state_dir / "dpe" / self.name))
        assert not leftovers, f"processes left behind: {leftovers}"


@contextlib.contextmanager
def dpe_running(dpe: Dpe, bus: Bus, timeout: float = 60.0) -> Iterator[threading.Thread]:
    """Run ``dpe`` (made by the test, e.g. with a driver of its own) on a thread; afterwards
    stop its deployable through ``bus``, as an operator would, and wait for the thread."""
    thread = run_in_thread(dpe)
    try:
        yield thread
    finally:
        try:
            bus.call(f"pcloud.dpe.{dpe.name}", "deployable_stop",
                     f'<deployable name="{dpe.name}"/>', timeout=timeout)
        finally:
            thread.join(timeout)


# ---- deployables ---------------------------------------------------------------------------

def process_service(name: str, command: str, extra: str = "") -> str:
    return (f'<service name="{name}" class="process" monitor_interval="1" {extra}>'
            f'<parameters><parameter name="command" value="{command}"/></parameters></service>')


def assembly(name: str, services: str, extra: str = "") -> str:
    return (f'<assembly name="{name}" heartbeat_interval="0.5" heartbeat_misses="4" {extra}>'
            f'<services>{services}</services></assembly>')


def deployable(name: str, assemblies: str, constraints: str = "", extra: str = "") -> str:
    cons = f"<constraints>{constraints}</constraints>" if constraints else ""
    return (f'<deployable name="{name}" infrastructure="process" {extra}>'
            f'<assemblies>{assemblies}</assemblies>{cons}</deployable>')


def tag() -> str:
    """A unique sleep duration, so each test finds its own processes with pgrep."""
    return f"{7000 + int(uuid.uuid4().int % 999)}.{uuid.uuid4().int % 10**6}"


@pytest.fixture
def harness(tmp_path, broker):
    made: list[DpeHarness] = []

    def make(xml: str, **kw) -> DpeHarness:
        h = DpeHarness(xml, tmp_path, **kw)
        made.append(h)
        return h.start()

    yield make
    for h in made:
        h.close()
