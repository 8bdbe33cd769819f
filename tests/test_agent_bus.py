"""The agent as a real subprocess on the real broker: methods, reports, heartbeats, recovery."""

from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from lxml import etree
from support.events import Collector, xml_body
from support.procs import ignores_sigterm
from support.waiting import wait_until

from pcloud.broker_admin import admin_for
from pcloud.bus import Bus, MethodError
from pcloud.bus.bus import login_of
from pcloud.credentials import with_credentials
from pcloud.identity import UserSpec, cpe_permissions, new_password, reply_topic_key

ROOT = Path(__file__).resolve().parent.parent
AGENT = str(Path(sys.executable).with_name("pcloud-agent"))
DUMMY = "/usr/lib/ocf/resource.d/heartbeat/Dummy"


@pytest.fixture(scope="module")
def client(broker_url):
    # it plays the agents' DPE: their answers come on a reply topic key of its login's
    bus = Bus(url=broker_url, name="test-agent-client",
              reply_topic_key=reply_topic_key(login_of(broker_url))).start()
    yield bus
    bus.close()


class AgentProc:
    """One pcloud-agent subprocess with its own identity, state dir and topic collectors;
    the test's client plays its DPE (``--controller``)."""

    def __init__(self, client: Bus, url: str, state_dir: Path) -> None:
        self.client = client
        self.url = url
        self.dep = "t" + uuid.uuid4().hex[:8]
        self.asm = "web"
        self.state_dir = state_dir
        self.queue = f"pcloud.agent.{self.dep}.{self.asm}"
        self.beats, self.reports = Collector(xml_body), Collector(xml_body)
        self.subs = [client.subscribe(f"pcloud.heartbeat.{self.dep}.{self.asm}", self.beats),
                     client.subscribe(f"pcloud.report.{self.dep}.{self.asm}", self.reports)]
        for sub in self.subs:
            assert sub.wait_attached(10)
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [AGENT, "--foreground", "--deployable", self.dep, "--assembly", self.asm,
             "--broker-url", self.url, "--state-dir", str(self.state_dir),
             "--heartbeat-interval", "0.2", "--controller", self.client.user], cwd=ROOT)
        pid = self.proc.pid
        self.beats.wait(lambda hb: hb.get("pid") == str(pid), 20)

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def call(self, method: str, body: str, timeout: float = 20.0):
        return self.client.call(self.queue, method, body, timeout=timeout)

    def op(self, method: str, name: str, cls: str = "process", interval: int = 0,
           timeout: int = 10000, extra: str = "", **params: str):
        operation = method.removeprefix("resource_")
        attrs = 'provider="heartbeat" type="Dummy"' if cls == "ocf" else ""
        plist = "".join(f'<parameter name="{k}" value="{v}"/>' for k, v in params.items())
        body = (f'<resource_op operation="{operation}" interval="{interval}" timeout="{timeout}">'
                f'<resource name="{name}" class="{cls}" {attrs}><parameters>{plist}'
                f'</parameters>{extra}</resource></resource_op>')
        return self.call(method, body)

    def cleanup(self) -> None:
        self.kill()
        for path in glob.glob(str(self.state_dir / "resources" / "*.json")):
            try:
                with open(path) as f:
                    os.killpg(json.load(f)["pgid"], signal.SIGKILL)
            except (OSError, ValueError, KeyError, TypeError):
                pass
        for sub in self.subs:
            sub.cancel()


@pytest.fixture
def agent(client, broker_url, tmp_path):
    a = AgentProc(client, broker_url, tmp_path / "agent")
    a.start()
    yield a
    a.cleanup()


def status_of(agent: AgentProc, name: str) -> etree._Element:
    result = agent.call("resource_status", "<resources/>")
    return next(r for r in result if r.get("name") == name)


def test_agent_info(agent):
    info = agent.call("agent_info", "<agent/>")
    assert (info.get("deployable"), info.get("assembly")) == (agent.dep, agent.asm)
    assert info.get("pid") == str(agent.proc.pid)


def test_requests_from_anyone_but_its_controller_are_refused(agent, broker_url):
    """Another login that the broker lets reach the queue (a CPE-like one) may still not
    operate the agent's resources: the agent checks user_id itself."""
    other = UserSpec(f"other{uuid.uuid4().hex[:6]}", new_password(), cpe_permissions())
    admin = admin_for(os.environ["PCLOUD_BROKER_ADMIN"])
    admin.put_users([other])
    try:
        with Bus(url=with_credentials(broker_url, other.credentials), name="intruder",
                 reply_topic_key=reply_topic_key(agent.client.user)) as bus:
            with pytest.raises(MethodError) as refused:
                bus.call(agent.queue, "resource_start", "<resource_op/>", timeout=20)
        assert refused.value.code == "not_authorized"
        assert agent.call("agent_info", "<agent/>") is not None
    finally:
        admin.delete_users([other.user])


def test_process_start_monitor_stop_and_sigkill_report(agent):
    result = agent.op("resource_start", "sleeper", command="sleep 60")
    assert (result.tag, result.get("rc"), result.get("status")) == ("op_result", "0", "done")
    assert agent.op("resource_monitor", "sleeper", interval=5000, command="sleep 60").get(
        "rc") == "0"
    pid = int(status_of(agent, "sleeper").get("pid"))
    os.kill(pid, signal.SIGKILL)
    report = agent.reports.wait(lambda r: r.get("resource") == "sleeper")
    assert (report.get("rc"), report.get("reason")) == ("7", "process exited with signal 9")
    assert report.get("interval") == "5000"
    assert status_of(agent, "sleeper").get("state") == "failed"
    assert agent.op("resource_stop", "sleeper", command="sleep 60").get("rc") == "0"
    assert agent.op("resource_start", "sleeper", command="sleep 60").get("rc") == "0"
    assert agent.op("resource_stop", "sleeper", command="sleep 60").get("rc") == "0"
    assert status_of(agent, "sleeper").get("state") == "stopped"


def test_daemonized_resource_death_reported(agent, tmp_path):
    pidfile = tmp_path / "daemon.pid"
    params = {"command": f"sh -c 'sleep 60 &amp; echo $! &gt; {pidfile}'",
              "pidfile": str(pidfile)}
    assert agent.op("resource_start", "daemon", **params).get("rc") == "0"
    pid = int(pidfile.read_text())
    assert status_of(agent, "daemon").get("pid") == str(pid)
    os.kill(pid, signal.SIGKILL)
    report = agent.reports.wait(lambda r: r.get("resource") == "daemon")
    assert report.get("reason") == "process exited with signal 9"


@pytest.mark.skipif(not os.access(DUMMY, os.X_OK), reason="resource-agents not installed")
def test_ocf_dummy_recurring_monitor_reports_failure(agent):
    assert agent.op("resource_start", "dummy", cls="ocf").get("rc") == "0"
    assert agent.op("resource_monitor", "dummy", cls="ocf", interval=300).get("rc") == "0"
    (agent.state_dir / "rsctmp" / "Dummy-dummy.state").unlink()
    report = agent.reports.wait(lambda r: r.get("resource") == "dummy")
    assert (report.get("rc"), report.get("interval")) == ("7", "300")
    assert agent.op("resource_cancel", "dummy", cls="ocf", interval=300).get("rc") == "0"
    assert agent.op("resource_stop", "dummy", cls="ocf").get("rc") == "0"


def test_failing_exec_probe_reports_not_running(agent, tmp_path):
    flag = tmp_path / "healthy"
    flag.write_text("ok")
    probe = f'<probe kind="exec" command="test -f {flag}" interval="0.1" timeout="1"/>'
    assert agent.op("resource_start", "probed", extra=probe, command="sleep 60").get(
        "rc") == "0"
    wait_until(lambda: agent.op("resource_monitor", "probed", extra=probe,
                                command="sleep 60").get("rc") == "0")
    time.sleep(0.3)
    flag.unlink()
    report = agent.reports.wait(lambda r: r.get("resource") == "probed")
    assert report.get("rc") == "7"
    assert "exec probe exited with status 1" in report.get("reason")


def test_stop_timeout_escalates_over_the_bus(agent):
    params = {"command": "trap '' TERM; sleep 60", "shell": "true"}
    assert agent.op("resource_start", "stubborn", **params).get("rc") == "0"
    pid = int(status_of(agent, "stubborn").get("pid"))
    wait_until(lambda: ignores_sigterm(pid))
    result = agent.op("resource_stop", "stubborn", timeout=1000, **params)
    assert result.get("rc") == "0" and "SIGKILL" in result.get("reason")
    assert not agent.reports.items


@pytest.mark.parametrize("method,body,code", [
    ("resource_start", "<resource_op", "malformed_xml"),
    ("resource_start", "<resources/>", "invalid_request"),
    ("resource_start", '<resource_op operation="stop"><resource name="x" class="process"/>'
                       "</resource_op>", "invalid_request"),
    ("resource_start", '<resource_op operation="start"><resource name="x" class="process"/>'
                       "</resource_op>", "invalid_parameter"),
    ("resource_start", '<resource_op operation="start"><resource name="../x" class="process"/>'
                       "</resource_op>", "invalid_request"),
    ("resource_cancel", '<resource_op operation="cancel" interval="1000"><resource name="nope" '
                        'class="ocf" type="Dummy"/></resource_op>', "unknown_resource"),
    ("resource_explode", "<agent/>", "unknown_method"),
    ("resource_start", '<!DOCTYPE x [<!ENTITY a "aaaa">]><resource_op>&a;</resource_op>',
     "malformed_xml"),
])
def test_bad_requests_get_error_responses(agent, method, body, code):
    with pytest.raises(MethodError) as err:
        agent.call(method, body)
    assert err.value.code == code
    assert agent.proc.poll() is None


def test_heartbeats_at_interval_and_stop_when_killed(agent):
    first = agent.beats.wait(lambda hb: hb.get("pid") == str(agent.proc.pid))
    seq = int(first.get("seq"))
    agent.beats.wait(lambda hb: hb.get("pid") == str(agent.proc.pid)
                     and int(hb.get("seq")) >= seq + 5)
    assert first.get("interval") == "0.2" and len(first.get("digest")) == 32
    agent.kill()
    count = len(agent.beats.items)
    with pytest.raises(AssertionError):
        agent.beats.wait_count(count + 2, timeout=1.5)


def test_restarted_agent_tells_the_truth_and_keeps_watching(agent):
    assert agent.op("resource_start", "kept", command="sleep 60").get("rc") == "0"
    assert agent.op("resource_monitor", "kept", interval=10000, command="sleep 60").get(
        "rc") == "0"
    pid = int(status_of(agent, "kept").get("pid"))
    agent.kill()
    agent.start()
    entry = status_of(agent, "kept")
    assert (entry.get("state"), entry.get("pid")) == ("running", str(pid))
    assert agent.op("resource_monitor", "kept", command="sleep 60").get("rc") == "0"
    os.kill(pid, signal.SIGKILL)
    report = agent.reports.wait(lambda r: r.get("resource") == "kept" and r.get("rc") == "7")
    assert report.get("reason").startswith("process exited")


def test_agent_survives_broker_restart(request, agent):
    try:
        broker = request.getfixturevalue("broker")
    except pytest.FixtureLookupError:
        pytest.skip("needs the conftest broker fixture (restartable broker)")
    broker.restart()
    count = len(agent.beats.items)
    agent.beats.wait_count(count + 3, timeout=60)
    assert agent.call("agent_info", "<agent/>").get("pid") == str(agent.proc.pid)
