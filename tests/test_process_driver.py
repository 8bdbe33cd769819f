"""The process driver with a stand-in agent: a process tree that forks and daemonizes.

The stand-in ignores the agent's flags, starts a child and a double-forked grandchild (as OCF
agents do) writing their pids to files, and exits on SIGTERM after stopping them.
"""

import json
import os
import signal
import sys
from pathlib import Path

import pytest
from support.events import Collector
from support.waiting import wait_until

from dpe_agent.drivers import DriverError, get_driver
from dpe_agent.drivers.base import AssemblySpec, PowerState
from dpe_agent.drivers.process import ProcessDriver, _alive
from pcloud.identity import Credentials

FAKE_AGENT = r'''
import ctypes, os, signal, subprocess, sys, time
ctypes.CDLL(None).prctl(36, 1, 0, 0, 0)  # child subreaper, as the real agent
here = os.environ["PCLOUD_STATE_DIR"]
child = subprocess.Popen(["sleep", "1000"])
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        open(os.path.join(here, "daemon.pid"), "w").write(str(os.getpid()))
        time.sleep(1000)
    os._exit(0)
open(os.path.join(here, "child.pid"), "w").write(str(child.pid))
def term(*_):
    if os.environ.get("IGNORE_TERM"):
        return
    child.kill()
    sys.exit(0)
signal.signal(signal.SIGTERM, term)
open(os.path.join(here, "ready"), "w").write("1")
while True:
    time.sleep(1)
'''

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="PID namespaces need root")


@pytest.fixture(params=[pytest.param(True, marks=needs_root), False], ids=["pidns", "pgroup"])
def setup(request, tmp_path):
    script = tmp_path / "fake_agent.py"
    script.write_text(FAKE_AGENT)
    driver = ProcessDriver(use_pid_namespace=request.param,
                           agent_argv=[sys.executable, str(script)])
    spec = AssemblySpec(deployable="d", name="a", uuid="u", broker_url="amqp://x",
                        state_dir=tmp_path / "sandbox",
                        credentials=Credentials("agent.d.a.0123abcd", "not-used"))
    yield driver, spec
    driver.fence(spec)


def tree_pids(spec):
    folder = Path(spec.state_dir)
    wait_until(lambda: (folder / "daemon.pid").exists() and (folder / "child.pid").exists())
    return [int((folder / n).read_text()) for n in ("child.pid", "daemon.pid")
            if (folder / n).read_text().strip().isdigit()]


def host_pids(driver, spec, inner):
    """Inside a PID namespace the files hold namespace pids: use the sandbox's pid list."""
    if not driver.use_pid_namespace:
        return inner
    from dpe_agent.drivers.process import _descendants
    return _descendants(driver.sandbox_pid(spec))


def test_start_records_pid_and_reports_running(setup):
    driver, spec = setup
    driver.start(spec)
    assert driver.status(spec) is PowerState.RUNNING
    assert (Path(spec.state_dir) / "sandbox.pid").exists()
    pid = driver.sandbox_pid(spec)
    driver.start(spec)                      # idempotent
    assert driver.sandbox_pid(spec) == pid


def test_fence_kills_whole_tree_including_daemonized(setup):
    driver, spec = setup
    driver.start(spec)
    pids = host_pids(driver, spec, tree_pids(spec))
    assert len(pids) >= 2
    driver.fence(spec)
    assert driver.status(spec) is PowerState.STOPPED
    wait_until(lambda: not any(_alive(p, None) for p in pids), timeout=3)


def test_stop_is_graceful_then_forced(setup):
    driver, spec = setup
    driver.start(spec)
    pids = host_pids(driver, spec, tree_pids(spec))
    wait_until(lambda: (Path(spec.state_dir) / "ready").exists())
    driver.stop(spec, timeout=5)
    assert driver.status(spec) is PowerState.STOPPED
    wait_until(lambda: not any(_alive(p, None) for p in pids), timeout=3)


def test_sandbox_killed_from_outside_is_seen_stopped(setup):
    driver, spec = setup
    driver.start(spec)
    tree_pids(spec)
    pids = host_pids(driver, spec, tree_pids(spec))
    os.kill(driver.sandbox_pid(spec), signal.SIGKILL)
    wait_until(lambda: driver.status(spec) is PowerState.STOPPED)
    driver.fence(spec)
    wait_until(lambda: not any(_alive(p, None) for p in pids), timeout=3)


def test_new_driver_instance_readopts_running_sandbox(setup):
    driver, spec = setup
    driver.start(spec)
    pid = driver.sandbox_pid(spec)
    other = ProcessDriver(use_pid_namespace=driver.use_pid_namespace,
                          agent_argv=driver.agent_argv)
    assert other.status(spec) is PowerState.RUNNING and other.sandbox_pid(spec) == pid
    other.fence(spec)
    assert driver.status(spec) is PowerState.STOPPED


def death_collector(driver: ProcessDriver) -> Collector[tuple[str, str]]:
    """A driver's death reports, ``(assembly, reason)``."""
    deaths: Collector[tuple[str, str]] = Collector()
    driver.watch_deaths(lambda assembly, reason: deaths.add((assembly, reason)))
    return deaths


def test_death_is_reported_once_and_fence_or_stop_report_none(setup):
    """A sandbox killed from outside is reported at once with its signal; one that the
    driver stops or fences itself is not reported at all."""
    driver, spec = setup
    deaths = death_collector(driver)
    driver.start(spec)
    tree_pids(spec)
    os.kill(driver.sandbox_pid(spec), signal.SIGKILL)
    deaths.wait_count(1)
    assert deaths.items == [("a", "sandbox exited with signal 9")]
    driver.fence(spec)
    driver.start(spec)
    tree_pids(spec)
    driver.fence(spec)
    driver.start(spec)
    wait_until(lambda: (Path(spec.state_dir) / "ready").exists())
    driver.stop(spec, timeout=5)
    driver.start(spec)
    tree_pids(spec)
    os.kill(driver.sandbox_pid(spec), signal.SIGKILL)    # a later death still is
    deaths.wait_count(2)
    assert deaths.items[1][0] == "a"


def test_death_of_an_adopted_sandbox_is_reported(setup):
    """A driver that found the sandbox running (a restarted DPE) watches it too."""
    driver, spec = setup
    driver.start(spec)
    tree_pids(spec)
    other = ProcessDriver(use_pid_namespace=driver.use_pid_namespace,
                          agent_argv=driver.agent_argv)
    deaths = death_collector(other)
    assert other.status(spec) is PowerState.RUNNING
    pid = other.sandbox_pid(spec)
    os.kill(pid, signal.SIGKILL)
    deaths.wait_count(1)
    assert deaths.items == [("a", f"sandbox process {pid} exited")]


def test_stale_pid_file_is_not_ours(setup):
    driver, spec = setup
    Path(spec.state_dir).mkdir(parents=True)
    (Path(spec.state_dir) / "sandbox.pid").write_text(
        f'{{"pid": {os.getpid()}, "start": 1, "mode": "pgroup"}}')
    assert driver.status(spec) is PowerState.STOPPED
    driver.fence(spec)
    assert _alive(os.getpid(), None)


def test_registry_knows_process_and_rejects_unknown():
    assert get_driver("process").name == "process"
    with pytest.raises(DriverError):
        get_driver("cardboard")


# --- the sandbox's own /run, /tmp and /var/run; its persistent directory ---------------------

MOUNTS_AGENT = r'''
import json, os, time
mark = "pcloud-mark-%(tag)s"
here = os.environ["PCLOUD_STATE_DIR"]
keep = os.environ["PCLOUD_PERSISTENT_DIR"]
paths = {"run": f"/run/{mark}", "tmp": f"/tmp/{mark}", "var_run": f"/var/run/{mark}.v",
         "rsc": f"/run/resource-agents/{mark}", "persistent": os.path.join(keep, mark)}
seen = {name: os.path.exists(path) for name, path in paths.items()}
for path in paths.values():
    open(path, "w").write("x")
seen.update(cwd=os.getcwd(), keep=keep, lock=os.path.isdir("/var/lock"),
            rsctmp=os.listdir(os.path.join(here, "rsctmp")) if os.path.isdir(
                os.path.join(here, "rsctmp")) else None)
with open(os.path.join(here, "seen.tmp"), "w") as out:
    json.dump(seen, out)
os.rename(os.path.join(here, "seen.tmp"), os.path.join(here, "seen.json"))
while True:
    time.sleep(1)
'''


@pytest.fixture(params=[pytest.param(True, marks=needs_root),
                        pytest.param(False, marks=needs_root)], ids=["pidns", "pgroup"])
def mounts_setup(request, tmp_path):
    tag = os.urandom(6).hex()
    script = tmp_path / "mounts_agent.py"
    script.write_text(MOUNTS_AGENT % {"tag": tag})
    driver = ProcessDriver(use_pid_namespace=request.param,
                           agent_argv=[sys.executable, str(script)])
    if not driver.use_mount_namespace:
        pytest.skip("no mount namespace on this host")
    spec = AssemblySpec(deployable="d", name="a", uuid="u", broker_url="amqp://x",
                        state_dir=tmp_path / "sandbox",
                        credentials=Credentials("agent.d.a.0123abcd", "not-used"))
    yield driver, spec, f"pcloud-mark-{tag}"
    driver.fence(spec)


def boot_and_look(driver, spec) -> dict:
    seen = Path(spec.state_dir) / "seen.json"
    seen.unlink(missing_ok=True)
    driver.start(spec)
    wait_until(seen.exists)
    return json.loads(seen.read_text())


def test_sandbox_run_and_tmp_are_its_own_and_empty_after_a_fence(mounts_setup):
    driver, spec, mark = mounts_setup
    folder = Path(spec.state_dir)
    first = boot_and_look(driver, spec)
    assert not any(first[k] for k in ("run", "tmp", "var_run", "rsc", "persistent"))
    assert first["cwd"] == first["keep"] == str(folder / "persistent")
    assert first["lock"]                                # /var/lock -> /run/lock exists
    for host in (f"/run/{mark}", f"/tmp/{mark}", f"/var/run/{mark}.v",
                 f"/run/resource-agents/{mark}"):
        assert not os.path.exists(host), f"{host} leaked onto the host"
    assert (folder / "persistent" / mark).exists()      # the sandbox's disk is the host's
    (folder / "rsctmp").mkdir()
    (folder / "rsctmp" / "Dummy-x.state").write_text("")
    driver.fence(spec)
    again = boot_and_look(driver, spec)
    assert not any(again[k] for k in ("run", "tmp", "var_run", "rsc"))
    assert again["persistent"]                          # survives, as a VM's disk does
    assert again["rsctmp"] in (None, [])                # HA_RSCTMP emptied, as /run at boot
    driver.stop(spec, timeout=5)
    assert not any(line.split()[4].startswith(("/run", "/tmp")) and "pcloud" in line
                   for line in Path("/proc/self/mountinfo").read_text().splitlines())


def test_without_a_mount_namespace_the_sandbox_still_runs(tmp_path):
    script = tmp_path / "mounts_agent.py"
    tag = os.urandom(6).hex()
    script.write_text(MOUNTS_AGENT % {"tag": tag})
    driver = ProcessDriver(use_pid_namespace=False, agent_argv=[sys.executable, str(script)],
                           use_mount_namespace=False)
    spec = AssemblySpec(deployable="d", name="a", uuid="u", broker_url="amqp://x",
                        state_dir=tmp_path / "sandbox",
                        credentials=Credentials("agent.d.a.0123abcd", "not-used"))
    try:
        if os.access("/run/resource-agents", os.W_OK):
            seen = boot_and_look(driver, spec)
            assert seen["keep"] == seen["cwd"] == str(tmp_path / "sandbox" / "persistent")
            assert Path(f"/tmp/pcloud-mark-{tag}").exists()     # today's behaviour: shared
    finally:
        driver.fence(spec)
        for path in (f"/run/pcloud-mark-{tag}", f"/tmp/pcloud-mark-{tag}",
                     f"/var/run/pcloud-mark-{tag}.v", f"/run/resource-agents/pcloud-mark-{tag}"):
            Path(path).unlink(missing_ok=True)


# --- the real agent in a real sandbox: an OCF Dummy after a fence and a restart --------------

DUMMY = "/usr/lib/ocf/resource.d/heartbeat/Dummy"


def dummy_op(bus, queue: str, method: str, interval: int = 0):
    body = (f'<resource_op operation="{method.removeprefix("resource_")}" interval="{interval}" '
            'timeout="10000"><resource name="dummy" class="ocf" provider="heartbeat" '
            'type="Dummy"><parameters/></resource></resource_op>')
    return bus.call(queue, method, body, timeout=20)


def agent_up(bus, queue: str, timeout: float = 40.0):
    """The agent's answer to ``agent_info`` once it serves its queue."""
    def answer() -> list | None:
        try:
            return [bus.call(queue, "agent_info", "<agent/>", timeout=3)]
        except Exception:
            return None

    return wait_until(answer, timeout, f"an answer to agent_info on {queue}")[0]


@pytest.mark.skipif(not os.access(DUMMY, os.X_OK), reason="resource-agents not installed")
def test_ocf_dummy_is_not_running_after_the_sandbox_is_fenced_and_restarted(broker, tmp_path):
    from pcloud.broker_admin import admin_for
    from pcloud.bus import Bus
    from pcloud.credentials import with_credentials
    from pcloud.identity import agent_spec, dpe_spec, reply_topic_key

    dep = "t" + os.urandom(4).hex()
    dpe, agent = dpe_spec(dep), agent_spec(dep, "web")
    admin = admin_for(os.environ["PCLOUD_BROKER_ADMIN"])
    admin.put_users([dpe, agent])
    driver = ProcessDriver()
    spec = AssemblySpec(deployable=dep, name="web", uuid=os.urandom(8).hex(),
                        broker_url=broker.url, state_dir=tmp_path / "sandbox",
                        heartbeat_interval=0.5, credentials=agent.credentials)
    queue = f"pcloud.agent.{dep}.web"
    bus = Bus(url=with_credentials(broker.url, dpe.credentials), name="test-sandbox-dpe",
              reply_topic_key=reply_topic_key(dpe.user)).start(timeout=30)
    try:
        driver.start(spec)
        agent_up(bus, queue)
        assert dummy_op(bus, queue, "resource_monitor").get("rc") == "7"
        assert dummy_op(bus, queue, "resource_start").get("rc") == "0"
        assert dummy_op(bus, queue, "resource_monitor").get("rc") == "0"
        driver.fence(spec)
        driver.start(spec)
        agent_up(bus, queue)
        probe = dummy_op(bus, queue, "resource_monitor")
        assert (probe.get("rc"), probe.get("status")) == ("7", "done")
        assert dummy_op(bus, queue, "resource_start").get("rc") == "0"
        driver.stop(spec, timeout=10)
    finally:
        driver.fence(spec)
        bus.close()
        admin.delete_users([dpe.user, agent.user])


def test_kept_paths_under_tmp_are_bound_back_once(tmp_path):
    from dpe_agent.drivers.sandbox_mounts import setup_script
    (tmp_path / "sb" / "inner").mkdir(parents=True)
    (tmp_path / "agent.py").write_text("")
    script = setup_script([str(tmp_path / "sb"), str(tmp_path / "sb" / "inner"),
                           str(tmp_path / "agent.py"), str(tmp_path / "missing"), "relative"])
    binds = [line.split()[-2] for line in script.splitlines()
             if "--bind" in line and str(tmp_path) in line]
    if str(tmp_path).startswith(os.path.realpath("/tmp") + "/"):
        assert sorted(binds) == [str(tmp_path / "agent.py"), str(tmp_path / "sb")]
    assert script.splitlines()[-1] == 'exec "$@"'


def test_the_agents_source_stays_visible_wherever_the_checkout_is():
    """A checkout under /tmp (installed in editable mode) is found by an import finder, not
    through sys.path: its folder must still be kept visible inside the sandbox."""
    import guest_agent
    from dpe_agent.drivers.process import _source_roots

    assert str(Path(guest_agent.__file__).resolve().parent.parent) in _source_roots()
