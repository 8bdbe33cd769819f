"""process resources with real processes: start, exit seen at once, daemons, stop escalation."""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import signal
import tempfile
import threading
from pathlib import Path

import pytest
from support.procs import ignores_sigterm
from support.waiting import wait_until

from guest_agent.resources import make_resource
from guest_agent.resources.base import ResourceError, ResourceSpec


@pytest.fixture
def make(reaper, tmp_path):
    made = []

    def build(name: str, **params: str):
        res = make_resource(ResourceSpec(name, "process", params=params), reaper, str(tmp_path))
        failures: list[str] = []
        event = threading.Event()

        def on_failure(reason: str, output: str) -> None:
            failures.append(reason)
            event.set()

        res.on_failure = on_failure
        res.failures, res.failed = failures, event
        made.append(res)
        return res

    yield build
    for res in made:
        res.stop(2.0)


def test_start_monitor_stop(make):
    res = make("sleeper", command="sleep 60")
    assert res.start(5).rc == 0
    pid = res.running_pid()
    assert pid and os.getpgid(pid) == pid
    assert res.monitor(5).rc == 0
    assert res.stop(5).rc == 0
    assert res.monitor(5).rc == 7
    assert not res.failures


def test_sigkill_seen_at_once(make):
    res = make("victim", command="sleep 60")
    assert res.start(5).rc == 0
    os.kill(res.running_pid(), signal.SIGKILL)
    assert res.failed.wait(5)
    assert res.failures == ["process exited with signal 9"]
    result = res.monitor(5)
    assert (result.rc, result.reason) == (7, "process exited with signal 9")


def test_exit_status_and_output(make):
    res = make("quitter", command="echo bye; exit 3", shell="true", start_wait="5")
    result = res.start(10)
    assert (result.rc, result.reason) == (1, "process exited with status 3")
    assert "bye" in result.output


def test_environment_and_cwd(make, tmp_path):
    res = make("env", command="sh -c 'echo $A:$B:$PWD; sleep 60'", environment="A='x y'",
               env_B="2", cwd=str(tmp_path))
    assert res.start(5).rc == 0
    wait_until(lambda: f"x y:2:{tmp_path}" in res.output())


def test_daemon_death_seen_through_subreaper(make, tmp_path):
    pidfile = tmp_path / "d.pid"
    res = make("daemon", command=f"sh -c 'sleep 60 & echo $! > {pidfile}'", pidfile=str(pidfile))
    assert res.start(5).rc == 0
    pid = res.running_pid()
    assert pid == int(pidfile.read_text())
    wait_until(lambda: open(f"/proc/{pid}/stat").read().split(")")[1].split()[1]
               == str(os.getpid()))
    os.kill(pid, signal.SIGKILL)
    assert res.failed.wait(5)
    assert res.failures == ["process exited with signal 9"]


def test_stop_escalates_to_sigkill(make):
    res = make("stubborn", command="trap '' TERM; sleep 60", shell="true")
    assert res.start(5).rc == 0
    pid = res.running_pid()
    wait_until(lambda: ignores_sigterm(pid))
    result = res.stop(1.0)
    assert result.rc == 0
    assert "SIGKILL" in result.reason
    assert res.monitor(1).rc == 7
    assert not res.failures


def test_missing_command_rc5(make):
    result = make("ghost", command="/nonexistent/binary").start(5)
    assert (result.rc, result.status) == (5, "error")


def test_bad_definition_raises(reaper, tmp_path):
    with pytest.raises(ResourceError) as err:
        make_resource(ResourceSpec("x", "process"), reaper, str(tmp_path))
    assert err.value.code == "invalid_parameter"
    with pytest.raises(ResourceError):
        make_resource(ResourceSpec("x", "process", params={"command": "a 'b"}), reaper,
                      str(tmp_path))
    with pytest.raises(ResourceError) as err:
        make_resource(ResourceSpec("x", "bogus"), reaper, str(tmp_path))
    assert err.value.code == "unknown_class"


def test_restarted_agent_adopts_by_pid_and_start_time(make, reaper, tmp_path):
    first = make("adopt", command="sleep 60")
    assert first.start(5).rc == 0
    pid = first.running_pid()
    first.close()
    second = make_resource(ResourceSpec("adopt", "process", params={"command": "sleep 60"}),
                           reaper, str(tmp_path))
    assert second.running_pid() == pid and second.monitor(1).rc == 0
    assert second.stop(5).rc == 0


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs root")


def _status_ids(pid: int) -> dict[str, list[int]]:
    """Uid, Gid and Groups of a process, as /proc/<pid>/status shows them."""
    with open(f"/proc/{pid}/status") as f:
        fields = dict(line.rstrip("\n").split(":", 1) for line in f if ":" in line)
    return {key: [int(v) for v in fields[key].split()] for key in ("Uid", "Gid", "Groups")}


@needs_root
def test_runs_as_named_user_and_exit_still_seen_at_once(make):
    nobody = pwd.getpwnam("nobody")
    res = make("unprivileged", command="sh -c 'echo home=$HOME user=$USER; sleep 60'",
               user="nobody")
    assert res.start(5).rc == 0
    pid = res.running_pid()
    ids = _status_ids(pid)
    assert ids["Uid"] == [nobody.pw_uid] * 4
    assert ids["Gid"] == [nobody.pw_gid] * 4
    assert ids["Groups"] == []            # root's supplementary groups are dropped
    wait_until(lambda: f"home={nobody.pw_dir} user=nobody" in res.output())
    os.kill(pid, signal.SIGKILL)
    assert res.failed.wait(5)
    assert res.failures == ["process exited with signal 9"]


@needs_root
def test_group_parameter_and_explicit_environment_wins(make, tmp_path):
    primary = pwd.getpwnam("nobody").pw_gid
    other = next(g for g in grp.getgrall() if g.gr_gid not in (0, primary))
    res = make("grouped", command="sh -c 'echo home=$HOME; sleep 60'", user="nobody",
               group=other.gr_name, env_HOME=str(tmp_path))
    assert res.start(5).rc == 0
    assert _status_ids(res.running_pid())["Gid"] == [other.gr_gid] * 4
    wait_until(lambda: f"home={tmp_path}" in res.output())
    assert res.stop(5).rc == 0 and not res.failures


@needs_root
def test_pidfile_naming_another_users_process_is_refused(make):
    drop = Path(tempfile.mkdtemp(prefix="pcloud-test-"))   # tmp_path's parents are 0700
    os.chmod(drop, 0o777)
    pidfile = drop / "d.pid"
    res = make("liar", command=f"sh -c 'echo 1 > {pidfile}'", pidfile=str(pidfile),
               user="nobody")
    try:
        result = res.start(5)
    finally:
        shutil.rmtree(drop)
    assert result.rc == 1 and "names process 1, which is not user nobody's" in result.reason
    assert res.running_pid() is None


def test_unknown_user_or_group_is_invalid_parameter(reaper, tmp_path):
    for params, words in (({"user": "no-such-user-xyz"}, "user 'no-such-user-xyz' does not"),
                          ({"user": "nobody", "group": "no-such-group-xyz"},
                           "group 'no-such-group-xyz' does not"),
                          ({"group": "nogroup"}, "'group' needs 'user'")):
        with pytest.raises(ResourceError) as err:
            make_resource(ResourceSpec("x", "process", params={"command": "true", **params}),
                          reaper, str(tmp_path))
        assert err.value.code == "invalid_parameter"
        assert words in err.value.message
