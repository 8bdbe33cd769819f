"""The DPE end to end: real broker, real ``pcloud-agent`` sandboxes, the process driver.

Each test gets a deployable of its own name (tests share the broker with other work), an
event collector subscribed before the DPE starts, and a clean-up that stops the deployable
and fences any sandbox left, then checks that no process of the test survives.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from lxml import etree
from support.dpe import (
    DpeHarness,
    assembly,
    broker_url,
    deployable,
    pgrep,
    process_service,
    tag,
    unique,
)
from support.events import Events, Heartbeats
from support.waiting import wait_until

from dpe_agent.drivers.process import ProcessDriver
from pcloud.bus import Bus, Message, MethodError
from pcloud.credentials import read_credentials_file, with_credentials
from pcloud.events import Event

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
    [pid] = wait_until(lambda: pgrep(f"sleep {t}"), timeout=30, what="resource process")
    mark = h.events.last_seq()
    os.kill(pid, signal.SIGKILL)
    h.events.wait(type="resource_state_change", resource="svc", state="failed", after=mark)
    back = h.events.wait(type="resource_state_change", resource="svc", state="running",
                         after=mark)
    assert float(back.extra["duration_ms"]) >= 0 and "signal 9" in back.reason
    assert back.extra["detected_at"] and back.extra["recovered_at"]
    new = wait_until(lambda: pgrep(f"sleep {t}"), timeout=30, what="restarted process")
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
        [pid] = wait_until(lambda: len(pgrep(f"sleep {t}")) == 1 and pgrep(f"sleep {t}"),
                           timeout=30, what="one resource process")
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
    wait_until(lambda: _all_running(h), timeout=30, what="adopted deployable")
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
        wait_until(lambda: _answers(h), timeout=30, what="the new DPE answering")
        time.sleep(4.0)             # app beats alone for longer than a graph takes
    finally:
        os.kill(db_agent, signal.SIGCONT)
    wait_until(lambda: _all_running(h), timeout=30, what="adopted deployable")
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
    wait_until(lambda: _all_running(h), timeout=60, what="the deployable running again")
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
    wait_until(lambda: _all_running(h), timeout=60, what="the deployable running again")
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
        # longer than a loss timeout: still nothing may be fenced
        h.events.none_within(2.0, type="fencing", after=mark)
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
    wait_until(lambda: pgrep(f"sleep {t}3"), timeout=30, what="changed service restarted")
    assert pgrep(f"sleep {t}1") == [pid_one]
    assert not pgrep(f"sleep {t}2") and pid_two
    mark = h.events.last_seq()
    h.call("deployable_reload", deployable(name, assembly("a", one + changed)))
    h.events.wait(type="config_reload", after=mark)
    wait_until(lambda: not pgrep(f"sleep {t}4"), timeout=30, what="removed assembly stopped")
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
    wait_until(lambda: _all_running(h), timeout=60, what="deployable running after restart")
    assert sorted(pgrep(f"sleep {t}")) == before
    assert (h.sandbox_pid("a"), h.sandbox_pid("b")) == sandboxes
    assert h.dpe.states[()] in ("running", "degraded")
    wait_until(lambda: h.dpe.states[()] == "running", timeout=30, what="running again")
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
    wait_until(lambda: any(due - time.monotonic() > 1.5 for due in list(h.dpe.holds.values())),
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
    [pid] = wait_until(lambda: pgrep(f"sleep {t}1"), timeout=30, what="resource process")
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
    (victim,) = wait_until(lambda: pgrep(f"sleep {t}1"), timeout=30, what="the resource")
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
    h.events.none_within(3.0, type="resource_state_change", resource="web",  # three monitor
                         state="starting", after=degraded.seq)    # intervals: no retry
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
        self.beats = Heartbeats()
        self.used = 0
        self.listen = h.bus.subscribe(f"pcloud.heartbeat.{h.name}.{asm}", self.beats)
        assert self.listen.wait_attached(10.0)
        creds, _ = read_credentials_file(h.spec(asm).state_dir / "credentials")
        self.bus = Bus(url=with_credentials(broker_url(), creds), name=f"voice-{asm}").start()

    def say(self, **attrs: str) -> None:
        """One heartbeat right after a fresh beat of the agent's, one seq ahead of it."""
        self.beats.wait_count(self.used + 1, timeout=30)
        self.used = len(self.beats)
        last = self.beats.items[-1]
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
        wait_until(lambda: _all_running(h), timeout=30, what="the restarted DPE")
        assert _addresses(h) == {"a": "10.0.2.16"}
        restart = h.events.last_seq()
        voice.say(addresses="10.0.2.16")          # as after the agent's own reconnect
        third = voice.until(h.events, restart, addresses="10.0.2.16 10.0.2.17")
        assert third.extra["old"] == "10.0.2.16"   # the restart itself raised no change
        assert len(h.events.find(type="assembly_address_change", after=restart)) == 1
        assert not h.events.find(type="assembly_state_change", after=mark, state="failed")
    finally:
        voice.close()
