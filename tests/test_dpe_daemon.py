"""The DPE end to end: real broker, real ``pcloud-agent`` sandboxes, the process driver.

Each test gets a deployable of its own name (tests share the broker with other work), an
event collector subscribed before the DPE starts, and a clean-up that stops the deployable
and fences any sandbox left, then checks that no process of the test survives.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
from lxml import etree

from dpe_agent.daemon import Dpe, run_in_thread
from dpe_agent.drivers.base import AssemblySpec
from dpe_agent.drivers.process import ProcessDriver, _descendants
from pcloud.bus import Bus, Message, MethodError
from pcloud.credentials import read_credentials_file, with_credentials
from pcloud.deployable import Deployable
from pcloud.events import Event


def broker_url() -> str:
    """The session broker's URL (the ``broker`` fixture sets it for a private node)."""
    return os.environ["PCLOUD_BROKER_URL"]


def unique(prefix: str = "t") -> str:
    return f"{prefix}{uuid.uuid4().hex[:8]}"


def wait_for(predicate, timeout: float = 30.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def pgrep(pattern: str) -> list[int]:
    out = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True).stdout
    return [int(p) for p in out.split() if int(p) != os.getpid()]


class Events:
    """Collects the events of one deployable."""

    def __init__(self, bus: Bus, deployable: str) -> None:
        self.items: list[Event] = []
        self._lock = threading.Lock()
        self.sub = bus.subscribe(f"pcloud.event.{deployable}.#", self._on)
        assert self.sub.wait_attached(10.0)

    def _on(self, msg) -> None:
        with self._lock:
            self.items.append(Event.from_xml(msg.body))

    def snapshot(self) -> list[Event]:
        with self._lock:
            return sorted(self.items, key=lambda e: e.seq)

    def find(self, type=None, assembly=None, resource=None, state=None, after: int = 0,
             **extra) -> list[Event]:
        return [e for e in self.snapshot()
                if e.seq > after and (type is None or e.type == type)
                and (assembly is None or e.assembly == assembly)
                and (resource is None or e.resource == resource)
                and (state is None or e.state == state)
                and all(e.extra.get(k) == v for k, v in extra.items())]

    def wait(self, timeout: float = 30.0, **match) -> Event:
        found = wait_for(lambda: self.find(**match), timeout, f"event {match}")
        return found[0]

    def last_seq(self) -> int:
        items = self.snapshot()
        return items[-1].seq if items else 0


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
            self.events.sub.cancel()
            self.bus.close()
        if self.dpe is not None:
            assert not self.dpe.violations, self.dpe.violations
        leftovers = pgrep(str(self.state_dir / "dpe" / self.name))
        assert not leftovers, f"processes left behind: {leftovers}"


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


# ---- tests -----------------------------------------------------------------------------------

def test_three_assemblies_start_in_dependency_order(harness):
    name, t = unique(), tag()
    xml = deployable(name, "".join([
        assembly("a", process_service("first", f"sleep {t}1")),
        assembly("b", process_service("second", f"sleep {t}2")),
        assembly("c", process_service("third", f"sleep {t}3")),
    ]), '<service_dependency id="d1" first="a:first" then="b:second"/>'
        '<service_dependency id="d2" first="b:second" then="c:third"/>')
    h = harness(xml)
    h.wait_running()
    ev = h.events
    running = {e.resource: e.seq for e in ev.find(type="resource_state_change", state="running")}
    starting = {e.resource: e.seq for e in ev.find(type="resource_state_change",
                                                   state="starting")}
    assert running["first"] < starting["second"]
    assert running["second"] < starting["third"]
    status = h.status()
    assert status.get("state") == "running"
    assert {r.get("name"): r.get("state") for r in status.iter("resource")} == {
        "first": "running", "second": "running", "third": "running"}
    queried = h.call("events_query", f'<events deployable="{name}" since_seq="0" limit="5"/>')
    assert [int(e.get("seq")) for e in queried] == [1, 2, 3, 4, 5]
    huge = 2**64 + 5        # beyond SQLite's integers: clamped, so nothing matches
    assert list(h.call("events_query", f'<events deployable="{name}" since_seq="{huge}"/>')) == []
    raised = h.call("event_raise", f'<event type="config_error" deployable="{name}" '
                                   'reason="test"/>')
    assert int(raised.get("seq")) > h.events.snapshot()[0].seq


def test_sigkilled_process_resource_is_restarted(harness):
    name, t = unique(), tag()
    h = harness(deployable(name, assembly("a", process_service("svc", f"sleep {t}"))))
    h.wait_running()
    [pid] = wait_for(lambda: pgrep(f"sleep {t}"), what="resource process")
    mark = h.events.last_seq()
    os.kill(pid, signal.SIGKILL)
    h.events.wait(type="resource_state_change", resource="svc", state="failed", after=mark)
    back = h.events.wait(type="resource_state_change", resource="svc", state="running",
                         after=mark)
    assert float(back.extra["duration_ms"]) >= 0 and "signal 9" in back.reason
    assert back.extra["detected_at"] and back.extra["recovered_at"]
    new = wait_for(lambda: pgrep(f"sleep {t}"), what="restarted process")
    assert new != [pid]


def test_ocf_monitor_failure_is_restarted(harness, tmp_path):
    name = unique()
    # In the sandbox's persistent directory: its /tmp and /run are its own.
    state_file = tmp_path / "dpe" / name / "assemblies" / "a" / "persistent" / "dummy.state"
    svc = ('<service name="dummy" class="ocf" provider="heartbeat" type="Dummy" '
           f'monitor_interval="1"><parameters><parameter name="state" value="{state_file}"/>'
           '</parameters></service>')
    h = harness(deployable(name, assembly("a", svc)))
    h.wait_running()
    assert state_file.exists()
    mark = h.events.last_seq()
    state_file.unlink()
    h.events.wait(type="resource_state_change", resource="dummy", state="failed", after=mark)
    h.events.wait(type="resource_state_change", resource="dummy", state="running", after=mark)
    assert state_file.exists()


def test_killed_assembly_is_fenced_and_restarted(harness):
    name, t = unique(), tag()
    h = harness(deployable(name, assembly("a", process_service("svc", f"sleep {t}1"))
                           + assembly("b", process_service("svc", f"sleep {t}2"))))
    h.wait_running()
    old = h.sandbox_pid("a")
    mark = h.events.last_seq()
    os.kill(old, signal.SIGKILL)
    h.events.wait(type="assembly_state_change", assembly="a", state="failed", after=mark)
    h.events.wait(type="fencing", assembly="a", after=mark)
    up = h.events.wait(type="assembly_state_change", assembly="a", state="running", after=mark)
    assert "duration_ms" in up.extra
    h.events.wait(type="resource_state_change", assembly="a", state="running", after=mark)
    assert h.sandbox_pid("a") != old
    assert not h.events.find(type="assembly_state_change", assembly="b", after=mark)


def test_escalation_climbs_resource_assembly_deployable(harness):
    name, t = unique(), tag()
    svc = process_service("svc", f"sleep {t}",
                          'escalation_failures="2" escalation_period="600"')
    h = harness(deployable(name, assembly("a", svc,
                                          'escalation_failures="2" escalation_period="600"')))
    h.wait_running()
    targets = []
    for _ in range(4):
        mark = h.events.last_seq()
        [pid] = wait_for(lambda: len(pgrep(f"sleep {t}")) == 1 and pgrep(f"sleep {t}"),
                         what="one resource process")
        os.kill(pid, signal.SIGKILL)
        h.events.wait(type="resource_state_change", resource="svc", state="failed",
                      after=mark)
        h.events.wait(type="resource_state_change", resource="svc", state="running",
                      after=mark, timeout=60)
        targets += [e.extra.get("escalated_to")
                    for e in h.events.find(type="escalation", after=mark)]
    assert targets == ["assembly", "deployable"]
    assert h.events.find(type="deployable_state_change", state="recovering")


def test_dpe_killed_and_restarted_adopts_running_resources(harness):
    name, t = unique(), tag()
    h = harness(deployable(name, assembly("a", process_service("svc", f"sleep {t}1"))
                           + assembly("b", process_service("svc", f"sleep {t}2"))),
                subprocess_mode=True)
    h.wait_running()
    before = sorted(pgrep(f"sleep {t}"))
    sandboxes = (h.sandbox_pid("a"), h.sandbox_pid("b"))
    h.kill_dpe()
    mark = h.events.last_seq()
    h.start()
    wait_for(lambda: _all_running(h), timeout=30, what="adopted deployable")
    assert sorted(pgrep(f"sleep {t}")) == before
    assert (h.sandbox_pid("a"), h.sandbox_pid("b")) == sandboxes
    assert not h.events.find(type="resource_state_change", state="starting", after=mark)


def _db_and_app(name: str, t: str) -> str:
    """``app:api`` needs ``db:store`` in another assembly; ``app:web`` needs nothing."""
    return deployable(name, assembly("db", process_service("store", f"sleep {t}1"))
                      + assembly("app", process_service("api", f"sleep {t}2")
                                 + process_service("web", f"sleep {t}3")),
                      '<service_dependency id="d1" first="db:store" then="app:api"/>')


def _pids(t: str) -> dict[str, list[int]]:
    return {svc: pgrep(f"sleep {t}{i}") for i, svc in enumerate(("store", "api", "web"), 1)}


def _restarted(h: DpeHarness, mark: int) -> set[str]:
    return {e.resource for e in h.events.find(type="resource_state_change", after=mark)
            if e.state in ("stopping", "restarting", "starting")}


def test_adoption_where_the_dependent_beats_first_restarts_nothing(harness):
    """The new DPE hears ``app`` while ``db`` (frozen) is still silent: ``db:store`` is
    unknown, not stopped, so ``app:api`` must not be stopped for it."""
    name, t = unique(), tag()
    h = harness(_db_and_app(name, t), subprocess_mode=True)
    h.wait_running()
    before = _pids(t)
    db_agent = h.agent_pid("db")
    h.kill_dpe()
    os.kill(db_agent, signal.SIGSTOP)
    try:
        mark = h.events.last_seq()
        h.start()
        wait_for(lambda: _answers(h), timeout=30, what="the new DPE answering")
        time.sleep(4.0)             # app beats alone for longer than a graph takes
    finally:
        os.kill(db_agent, signal.SIGCONT)
    wait_for(lambda: _all_running(h), timeout=30, what="adopted deployable")
    assert _pids(t) == before
    assert not _restarted(h, mark)


def test_dpe_killed_during_a_graph_restarts_only_the_failed_chain(harness):
    name, t = unique(), tag()
    h = harness(_db_and_app(name, t), subprocess_mode=True)
    h.wait_running()
    web = pgrep(f"sleep {t}3")
    mark = h.events.last_seq()
    (store,) = pgrep(f"sleep {t}1")
    os.kill(store, signal.SIGKILL)
    h.events.wait(type="resource_state_change", resource="store", state="failed", after=mark)
    h.kill_dpe()
    h.start()
    wait_for(lambda: _all_running(h), timeout=60, what="the deployable running again")
    pids = _pids(t)
    assert all(len(found) == 1 for found in pids.values()), pids
    assert pids["store"] != [store]
    assert pids["web"] == web
    assert "web" not in _restarted(h, mark)


def test_dpe_killed_while_an_assembly_is_really_down(harness):
    name, t = unique(), tag()
    h = harness(_db_and_app(name, t), subprocess_mode=True)
    h.wait_running()
    web = pgrep(f"sleep {t}3")
    h.kill_dpe()
    ProcessDriver().fence(h.spec("db"))
    mark = h.events.last_seq()
    h.start()
    h.events.wait(type="resource_state_change", resource="store", state="running",
                  after=mark, timeout=60)
    wait_for(lambda: _all_running(h), timeout=60, what="the deployable running again")
    pids = _pids(t)
    assert all(len(found) == 1 for found in pids.values()), pids
    assert pids["web"] == web
    assert "web" not in _restarted(h, mark)


def _answers(h: DpeHarness) -> bool:
    try:
        h.status()
    except Exception:
        return False
    return True


def _all_running(h: DpeHarness) -> bool:
    try:
        status = h.status()
    except Exception:
        return False
    return all(r.get("state") == "running" for r in status.iter("resource")) and all(
        a.get("state") == "running" for a in status.iter("assembly"))


def test_mass_heartbeat_loss_is_not_n_failures(harness):
    name, t = unique(), tag()
    h = harness(deployable(name, "".join(
        assembly(a, process_service("svc", f"sleep {t}{i}")) for i, a in enumerate("abc"))))
    h.wait_running()
    agents = [h.agent_pid(a) for a in "abc"]
    mark = h.events.last_seq()
    for pid in agents:
        os.kill(pid, signal.SIGSTOP)
    try:
        loss = h.events.wait(type="deployable_state_change", state="degraded", after=mark,
                             timeout=15)
        assert "at once" in loss.reason
        time.sleep(2.0)          # longer than a loss timeout: still nothing may be fenced
    finally:
        for pid in agents:
            os.kill(pid, signal.SIGCONT)
    h.wait_running(after=mark)
    assert not h.events.find(type="fencing", after=mark)
    assert not h.events.find(type="assembly_state_change", after=mark)
    assert [h.agent_pid(a) for a in "abc"] == agents


def test_reload_touches_only_what_changed(harness):
    name, t = unique(), tag()
    one = process_service("one", f"sleep {t}1")
    two = process_service("two", f"sleep {t}2")
    h = harness(deployable(name, assembly("a", one + two)))
    h.wait_running()
    [pid_one] = pgrep(f"sleep {t}1")
    [pid_two] = pgrep(f"sleep {t}2")
    mark = h.events.last_seq()
    changed = process_service("two", f"sleep {t}3")
    added = assembly("b", process_service("three", f"sleep {t}4"))
    result = h.call("deployable_reload", deployable(name, assembly("a", one + changed) + added))
    assert result.get("name") == name
    h.events.wait(type="config_reload", after=mark)
    h.events.wait(type="resource_state_change", assembly="b", resource="three",
                  state="running", after=mark)
    h.events.wait(type="resource_state_change", assembly="a", resource="two",
                  state="running", after=mark)
    wait_for(lambda: pgrep(f"sleep {t}3"), what="changed service restarted")
    assert pgrep(f"sleep {t}1") == [pid_one]
    assert not pgrep(f"sleep {t}2") and pid_two
    mark = h.events.last_seq()
    h.call("deployable_reload", deployable(name, assembly("a", one + changed)))
    h.events.wait(type="config_reload", after=mark)
    wait_for(lambda: not pgrep(f"sleep {t}4"), what="removed assembly stopped")
    assert [a.get("name") for a in h.status().iter("assembly")] == ["a"]


def test_broker_restart_is_survived_without_restarts(harness, broker):
    broker.require_control()
    name, t = unique(), tag()
    h = harness(deployable(name, assembly("a", process_service("svc", f"sleep {t}1"))
                           + assembly("b", process_service("svc", f"sleep {t}2"))))
    h.wait_running()
    before = sorted(pgrep(f"sleep {t}"))
    sandboxes = (h.sandbox_pid("a"), h.sandbox_pid("b"))
    broker.kill9()
    broker.start()
    wait_for(lambda: _all_running(h), timeout=60, what="deployable running after restart")
    assert sorted(pgrep(f"sleep {t}")) == before
    assert (h.sandbox_pid("a"), h.sandbox_pid("b")) == sandboxes
    assert h.dpe.states[()] in ("running", "degraded")
    wait_for(lambda: h.dpe.states[()] == "running", timeout=30, what="running again")
    assert not [e for e in h.events.find(type="fencing")]


def test_stop_goes_through_the_agents_in_reverse_dependency_order(harness):
    name, t = unique(), tag()
    h = harness(deployable(name, assembly("a", process_service("first", f"sleep {t}1"))
                           + assembly("b", process_service("second", f"sleep {t}2")),
                           '<service_dependency id="d" first="a:first" then="b:second"/>'))
    h.wait_running()
    mark = h.events.last_seq()
    assert h.call("deployable_stop").get("state") == "stopping"
    h.events.wait(type="deployable_state_change", state="stopped", after=mark)
    h.thread.join(30)

    def seq(**match) -> int:
        [event] = h.events.find(after=mark, **match)
        return event.seq

    stops = {(r, s): seq(type="resource_state_change", resource=r, state=s)
             for r in ("first", "second") for s in ("stopping", "stopped")}
    assert stops["second", "stopping"] < stops["second", "stopped"] \
        < stops["first", "stopping"] < stops["first", "stopped"]
    first_assembly_stop = min(e.seq for e in h.events.find(type="assembly_state_change",
                                                           state="stopping", after=mark))
    assert max(stops.values()) < first_assembly_stop
    assert not pgrep(f"sleep {t}")


def test_backoff_does_not_hold_up_a_stop(harness):
    name = unique()
    h = harness(deployable(name, assembly("a", process_service("flaps", "sh -c 'exit 3'"))))
    wait_for(lambda: any(due - time.monotonic() > 1.5 for due in list(h.dpe.holds.values())),
             timeout=60, what="a back-off hold of more than 1.5 s")
    mark = h.events.last_seq()
    begun = time.monotonic()
    h.call("deployable_stop")
    h.events.wait(type="deployable_state_change", state="stopped", after=mark, timeout=15)
    assert time.monotonic() - begun < 10
    h.thread.join(30)


def test_status_has_last_failure_and_reason_and_loss_fails_the_assembly_first(harness):
    name, t = unique(), tag()
    h = harness(deployable(name, assembly("a", process_service("svc", f"sleep {t}1")
                                          + process_service("two", f"sleep {t}2"))))
    h.wait_running()
    [pid] = wait_for(lambda: pgrep(f"sleep {t}1"), what="resource process")
    mark = h.events.last_seq()
    os.kill(pid, signal.SIGKILL)
    h.events.wait(type="resource_state_change", resource="svc", state="running", after=mark)
    resource = h.status().find("assembly/resource[@name='svc']")
    assert resource.get("state") == "running" and resource.get("fail_count") == "1"
    assert resource.get("last_failure", "").endswith("Z") and "signal 9" in resource.get("reason")
    assert h.status().find("assembly/resource[@name='two']").get("last_failure") is None

    mark = h.events.last_seq()
    os.kill(h.sandbox_pid("a"), signal.SIGKILL)
    failed = h.events.wait(type="assembly_state_change", assembly="a", state="failed",
                           after=mark)
    h.events.wait(type="assembly_state_change", assembly="a", state="running", after=mark)
    lost = [e for e in h.events.find(type="resource_state_change", after=mark)
            if e.seq < failed.seq]
    assert not lost, [(e.resource, e.state) for e in lost]
    asm = h.status().find("assembly[@name='a']")
    assert asm.get("last_failure") and asm.get("reason") == failed.reason


def test_dped_status_and_stop_without_a_cpe(harness):
    """``dped --status`` and ``dped --stop`` drive a CPE-less dped; --stop returns once that
    dped has stopped everything and exited."""
    name, t = unique(), tag()
    h = harness(deployable(name, assembly("a", process_service("svc", f"sleep {t}1"))),
                subprocess_mode=True)
    h.wait_running()
    dped = str(Path(sys.executable).with_name("dped"))
    env = dict(os.environ, PCLOUD_BROKER_URL=broker_url())
    status = subprocess.run([dped, "--status", "--name", name, "--state-dir", str(h.state_dir)],
                            capture_output=True, text=True, env=env, timeout=60)
    assert status.returncode == 0, status.stderr
    assert status.stdout.splitlines()[0] == f"deployable {name}: running"
    assert "svc: running (fails 0)" in status.stdout
    stop = subprocess.run([dped, "--stop", "--deployable", str(h.doc), "--state-dir",
                           str(h.state_dir)], capture_output=True, text=True, env=env, timeout=90)
    assert stop.returncode == 0, stop.stderr
    assert stop.stdout.splitlines() == [f"deployable {name}: stopping",
                                        f"deployable {name}: stopped"]
    assert h.proc is not None and h.proc.poll() == 0     # it had exited when --stop returned
    h.proc = None
    assert not pgrep(f"sleep {t}1")
    gone = subprocess.run([dped, "--status", "--name", unique(), "--state-dir",
                           str(h.state_dir)], capture_output=True, text=True, env=env, timeout=60)
    assert gone.returncode == 1 and "no DPE of" in gone.stderr


@pytest.mark.parametrize("pause", [1.0, 2.0, 5.0,
                                   pytest.param(20.0, marks=pytest.mark.slow)])
def test_paused_dpe_does_not_fence_or_alarm_for_its_own_pause(harness, pause):
    """Frozen for ``pause`` seconds against 0.5 s beats (2 s timeout): the beats it could
    not receive are nobody's silence. No fencing, no mass-loss ``degraded``."""
    name, t = unique(), tag()
    h = harness(deployable(name, assembly("a", process_service("svc", f"sleep {t}1"))
                           + assembly("b", process_service("svc2", f"sleep {t}2"))),
                subprocess_mode=True)
    h.wait_running()
    sandboxes = (h.sandbox_pid("a"), h.sandbox_pid("b"))
    mark = h.events.last_seq()
    h.proc.send_signal(signal.SIGSTOP)
    try:
        time.sleep(pause)
    finally:
        h.proc.send_signal(signal.SIGCONT)
    # Once a resource failure after the pause has been handled, any verdict on the silence
    # during the pause has been given too: a lost assembly is judged on the first tick.
    (victim,) = wait_for(lambda: pgrep(f"sleep {t}1"), what="the resource")
    os.kill(victim, signal.SIGKILL)
    h.events.wait(type="resource_state_change", resource="svc", state="running", after=mark)
    assert not h.events.find(type="fencing", after=mark)
    assert not h.events.find(type="assembly_state_change", after=mark)
    assert not [e for e in h.events.find(type="deployable_state_change", after=mark)
                if "heartbeats" in (e.reason or "")]
    assert (h.sandbox_pid("a"), h.sandbox_pid("b")) == sandboxes


def _missing_httpd(monitor: str = "1") -> str:
    """ocf:heartbeat:apache pointed at a program that is not there: rc 5, not installed."""
    return (f'<service name="web" class="ocf" provider="heartbeat" type="apache" '
            f'monitor_interval="{monitor}"><parameters>'
            '<parameter name="httpd" value="/nonexistent/apache2"/></parameters></service>')


def test_not_installed_resource_is_blocked_with_its_reason_and_not_retried(harness):
    name, t = unique(), tag()
    h = harness(deployable(name, assembly("a", _missing_httpd()
                                          + process_service("ok", f"sleep {t}1"))))
    degraded = h.events.wait(type="deployable_state_change", state="degraded")
    assert "a/web is blocked" in degraded.reason
    assert "apache httpd program not found" in degraded.reason      # the agent's own words
    h.events.wait(type="resource_state_change", resource="ok", state="running")
    time.sleep(3.0)                 # three monitor intervals: nothing retries it
    starts = h.events.find(type="resource_state_change", resource="web", state="starting")
    assert len(starts) == 1
    web = next(r for r in h.status().iter("resource") if r.get("name") == "web")
    assert web.get("state") == "blocked" and web.get("fail_count") == "0"
    assert h.status().get("state") == "degraded"


def test_cleanup_of_a_blocked_resource_tries_it_again(harness):
    name = unique()
    h = harness(deployable(name, assembly("a", _missing_httpd())))
    h.events.wait(type="resource_state_change", resource="web", state="blocked")
    mark = h.events.last_seq()
    answer = h.call("resource_cleanup",
                    f'<resource deployable="{name}" assembly="a" name="web"/>')
    assert answer.get("name") == "web"
    h.events.wait(type="resource_state_change", resource="web", state="starting", after=mark)
    h.events.wait(type="resource_state_change", resource="web", state="blocked", after=mark)
    with pytest.raises(MethodError, match="unknown_resource"):
        h.call("resource_cleanup", f'<resource deployable="{name}" assembly="a" name="nope"/>')


def test_blocked_resource_is_probed_again_slowly(harness, monkeypatch):
    monkeypatch.setattr("dpe_agent.recovery.BLOCKED_REPROBE", 2.0)
    name = unique()
    h = harness(deployable(name, assembly("a", _missing_httpd(monitor="30"))))
    first = h.events.wait(type="resource_state_change", resource="web", state="blocked")
    h.events.wait(type="resource_state_change", resource="web", state="starting",
                  after=first.seq, timeout=30)


class AgentVoice:
    """Speaks as one running assembly's agent: its own per-boot login (from its sandbox's
    credentials file), its uuid and ``started``, and the seq after the agent's last beat
    (the agent's next beat is then a stale duplicate, which costs nothing: a loss takes four
    missed beats)."""

    def __init__(self, h: DpeHarness, asm: str) -> None:
        self.asm, self.h = asm, h
        self.beats: list[etree._Element] = []
        self.used = 0
        self.listen = h.bus.subscribe(f"pcloud.heartbeat.{h.name}.{asm}",
                                      lambda m: self.beats.append(etree.fromstring(m.body)))
        assert self.listen.wait_attached(10.0)
        creds, _ = read_credentials_file(h.spec(asm).state_dir / "credentials")
        self.bus = Bus(url=with_credentials(broker_url(), creds), name=f"voice-{asm}").start()

    def say(self, **attrs: str) -> None:
        """One heartbeat right after a fresh beat of the agent's, one seq ahead of it."""
        wait_for(lambda: len(self.beats) > self.used, what="an agent beat")
        self.used = len(self.beats)
        last = self.beats[-1]
        elem = etree.Element("heartbeat", {k: last.get(k) for k in (
            "deployable", "assembly", "uuid", "started", "interval", "time")})
        elem.set("seq", str(int(last.get("seq")) + 1))
        for key, value in attrs.items():
            elem.set(key, value)
        self.bus.publish(f"pcloud.heartbeat.{self.h.name}.{self.asm}",
                         Message(body=elem, subject="heartbeat", opcode="heartbeat"))

    def until(self, events: Events, after: int, **attrs: str) -> Event:
        """Say it until its address event comes (a beat overtaken by the agent's is stale)."""
        for _ in range(5):
            self.say(**attrs)
            found = events.find(type="assembly_address_change", assembly=self.asm,
                                after=after)
            if not found:
                try:
                    return events.wait(5.0, type="assembly_address_change",
                                       assembly=self.asm, after=after)
                except AssertionError:
                    continue
            return found[0]
        raise AssertionError(f"no assembly_address_change for {attrs}")

    def close(self) -> None:
        self.listen.cancel()
        self.bus.close()


def _addresses(h: DpeHarness) -> dict[str, str | None]:
    return {a.get("name"): a.get("addresses") for a in h.status().iter("assembly")}


def test_address_changes_are_events_kept_across_a_dpe_restart(harness):
    """Heartbeats from the agent's own login carry its addresses: each change raises
    ``assembly_address_change`` (old, new), an unchanged or invalid report
    raises nothing, ``deployable_status`` shows them, and a restarted DPE still knows them."""
    name, t = unique(), tag()
    h = harness(deployable(name, assembly("a", process_service("svc", f"sleep {t}"))),
                subprocess_mode=True)
    h.wait_running()
    voice = AgentVoice(h, "a")
    try:
        own = _addresses(h)["a"] or ""       # the agent's own first report came before running
        mark = h.events.last_seq()
        first = voice.until(h.events, mark, addresses="fd00::5 10.0.2.15")
        assert (first.extra["old"], first.extra["new"]) == (own, "10.0.2.15 fd00::5")
        assert _addresses(h) == {"a": "10.0.2.15 fd00::5"}
        voice.say(addresses="10.0.2.15 fd00:0::5")          # the same set, written otherwise
        voice.say(addresses="10.0.2.300")                   # not an address: dropped
        second = voice.until(h.events, first.seq, addresses="10.0.2.16")
        assert (second.extra["old"], second.extra["new"]) == ("10.0.2.15 fd00::5", "10.0.2.16")
        assert len(h.events.find(type="assembly_address_change", after=mark)) == 2

        h.kill_dpe()
        h.start()
        wait_for(lambda: _all_running(h), timeout=30, what="the restarted DPE")
        assert _addresses(h) == {"a": "10.0.2.16"}
        restart = h.events.last_seq()
        voice.say(addresses="10.0.2.16")          # as after the agent's own reconnect
        third = voice.until(h.events, restart, addresses="10.0.2.16 10.0.2.17")
        assert third.extra["old"] == "10.0.2.16"   # the restart itself raised no change
        assert len(h.events.find(type="assembly_address_change", after=restart)) == 1
        assert not h.events.find(type="assembly_state_change", after=mark, state="failed")
    finally:
        voice.close()
