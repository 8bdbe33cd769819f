"""What a new operator hit (issue 14), each checked where a test can see it.

In-process through ``Commands`` and ``Shell`` (their test seams), no broker: the dependency
checks, "did you mean", the templates, the default broker's note, refused brokers and a
stopped cped reported at once, events never printed after a stray prompt, and timestamped
log files. The flows that need a real cped are in test_pcloudsh_cpe.py, live events across a
broker outage in test_pcloudsh_live.py.
"""

from __future__ import annotations

import fcntl
import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pcloud import config
from pcloud.deployable import Deployable
from pcloud.events import Event
from pcloudsh.commands import CommandError, Commands
from pcloudsh.shell import Shell

REFUSED = "amqp://nobody:nothing@127.0.0.1:1"


@pytest.fixture
def commands(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Commands:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    return Commands(state_dir=tmp_path / "state", out=io.StringIO(), broker_url=REFUSED)


def output(commands: Commands) -> str:
    text = commands.out.getvalue()
    commands.out.seek(0)
    commands.out.truncate()
    return text


def test_dependencies_are_checked_by_the_catalogue_and_can_be_removed(commands: Commands
                                                                       ) -> None:
    for line in ("assembly_create a1 debian-12", "assembly_resource_add web process a1",
                 "assembly_resource_add db dummy a1", "deployable_create d1",
                 "deployable_assembly_add d1 a1"):
        commands.run(line.split()[0], line.split()[1:])
    with pytest.raises(CommandError, match=r"'a1:web' cannot depend on itself"):
        commands.run("deployable_dependency_add", ["d1", "a1:web", "a1:web"])
    commands.run("deployable_dependency_add", ["d1", "a1:db", "a1:web"])
    with pytest.raises(CommandError, match="already starts a1:db before a1:web"):
        commands.run("deployable_dependency_add", ["d1", "a1:db", "a1:web"])
    with pytest.raises(CommandError, match=r"dependency refused: dependencies form a cycle: "
                                           r"a1:\w+ -> a1:\w+ -> a1:\w+"):
        commands.run("deployable_dependency_add", ["d1", "a1:web", "a1:db"])
    # what was refused was not stored: the document still starts as the CPE would take it
    Deployable.from_xml(commands.catalogue.document("d1"), assign_uuids=False)
    output(commands)
    commands.json = True
    commands.run("deployable_dependency_list", ["d1"])
    assert '"first": "a1:db"' in output(commands)
    commands.json = False
    commands.run("deployable_dependency_remove", ["d1", "a1:db", "a1:web"])
    assert "a1:db no longer starts before a1:web" in output(commands)
    assert "<constraints" not in commands.catalogue.document("d1")
    with pytest.raises(CommandError, match=r"has no dependency a1:db before a1:web "
                                           r"\(it has: none\)"):
        commands.run("deployable_dependency_remove", ["d1", "a1:db", "a1:web"])


def test_a_mistyped_command_gets_a_did_you_mean(commands: Commands) -> None:
    with pytest.raises(CommandError, match=r"unknown command 'deployable_lst' \(did you mean "
                                           r"'deployable_list'"):
        commands.run("deployable_lst", [])
    with pytest.raises(CommandError) as caught:
        commands.run("xyzzy", [])
    assert "did you mean" not in str(caught.value)
    Shell(commands, live_events=False).onecmd("help assembly_creat")
    assert "(did you mean 'assembly_create'" in output(commands)


def test_a_process_template_and_the_user_template_folder(commands: Commands,
                                                         tmp_path: Path) -> None:
    own = tmp_path / "config" / "pcloud" / "templates"
    own.mkdir(parents=True)
    (own / "worker.xml").write_text(
        '<service name="worker" class="process"><parameters>'
        '<parameter name="command" value="sleep 1000"/></parameters></service>')
    (own / "broken.xml").write_text('<service name="broken" class="process">')
    commands.run("template_list", [])
    listing = output(commands)
    assert "process" in listing and "worker" in listing
    assert [line.split()[-1] for line in listing.splitlines() if line.startswith("broken")
            ] == ["no"]                           # listed, and marked invalid at once
    commands.run("assembly_create", ["a1", "debian-12"])
    commands.run("assembly_resource_add", ["p", "process", "a1"])
    commands.run("assembly_resource_add", ["w", "worker", "a1"])
    assert "warning" not in output(commands)
    commands.run("deployable_create", ["d1"])
    commands.run("deployable_assembly_add", ["d1", "a1"])
    dep = Deployable.from_xml(commands.catalogue.document("d1"), assign_uuids=False)
    services = {s.name: s for s in dep.assemblies[0].services}
    assert {n: s.klass for n, s in services.items()} == {"p": "process",
                                                                  "w": "process"}
    with pytest.raises(CommandError, match=f"your own go in {own}"):
        commands.run("assembly_resource_add", ["x", "nosuch", "a1"])


def test_the_default_broker_is_never_used_silently(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """Nothing configured: pcloudsh says which broker it tries and how to reach pcloud's own
    (the default is pointed at a refused port: this host's own RabbitMQ is never touched)."""
    monkeypatch.delenv("PCLOUD_BROKER_URL", raising=False)
    monkeypatch.setenv("PCLOUD_CONFIG", str(tmp_path / "none.conf"))
    monkeypatch.setenv("PCLOUD_STATE_DIR", str(tmp_path))
    monkeypatch.setattr(config, "DEFAULT_BROKER_URL", REFUSED)
    assert config.broker_choice() == (REFUSED, "default")
    commands = Commands(out=io.StringIO())
    with pytest.raises(CommandError) as caught:
        commands.run("deployable_status", ["d1"])
    message = str(caught.value)
    assert "connection refused" in message and "export PCLOUD_STATE_DIR" in message
    assert "pcloud-broker start" in message and "nothing@" not in message
    note = capsys.readouterr().err
    assert note.startswith("pcloudsh: note: no broker configured") and note.count("\n") == 1


def test_refused_broker_and_stopped_cped_are_reported_at_once(commands: Commands) -> None:
    """Both are known without waiting: a refused TCP connect, and a cped lock nobody holds
    (the AMQP attempt would say "within 5 s", the call "did not answer within 15 s")."""
    with pytest.raises(CommandError, match=r"127\.0\.0\.1:1: connection refused$"):
        commands.run("deployable_status", ["d1"])
    commands.state_dir.mkdir(parents=True)
    lock = commands.state_dir / "cped.lock"
    lock.write_text("12345\n")
    with pytest.raises(CommandError, match=f"cped is not running on {commands.state_dir}: "
                                           "start it with 'cped'"):
        commands.run("deployable_status", ["d1"])
    with open(lock) as held:                  # a running cped holds it: then the bus decides
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(CommandError, match="connection refused"):
            commands.run("deployable_status", ["d1"])


def test_events_never_follow_a_stray_prompt(commands: Commands,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """An event that arrives while a command runs is a plain line; only at the prompt is the
    prompt redrawn under it."""
    shell = Shell(commands, live_events=False)
    event = Event(3, None, "deployable_state_change", "d1", state="running")
    monkeypatch.setattr(sys.stdin, "isatty", lambda: True, raising=False)
    shell._at_prompt = False
    shell._show_event(event, None)
    during = output(commands)
    assert shell.prompt not in during and during.endswith("d1  deployable running\n")
    shell._at_prompt = True
    shell._show_event(event, None)
    waiting = output(commands)
    assert waiting.startswith("\r\x1b[K") and waiting.endswith(f"running\n{shell.prompt}")


LOGGER = ("from pcloud.log import setup_logging; import logging; "
          "setup_logging('tester'); logging.getLogger('pcloud').info('hello')")


@pytest.mark.parametrize("setting, to_file, stamped", [
    (None, True, True), (None, False, False), ("0", True, False), ("1", False, True)])
def test_log_files_are_timestamped(tmp_path: Path, setting: str | None, to_file: bool,
                                   stamped: bool) -> None:
    """cped.log, dped.log and agent.log are stderr redirected to a file: stamped; a terminal
    or journald (a pipe or socket) stamps lines itself."""
    env = {k: v for k, v in os.environ.items() if k != "PCLOUD_LOG_TIME"}
    if setting is not None:
        env["PCLOUD_LOG_TIME"] = setting
    log = tmp_path / "x.log"
    with open(log, "w") as out:
        result = subprocess.run([sys.executable, "-c", LOGGER], env=env, timeout=60,
                                stderr=out if to_file else subprocess.PIPE, text=True)
    line = log.read_text() if to_file else result.stderr
    assert line.endswith(": INFO hello\n"), line
    prefix = line.split("tester[")[0]
    if stamped:
        assert len(prefix) == len("2026-12-07 14:05:01.123 "), line
        assert prefix[4] == "-" and prefix[19] == "."
    else:
        assert prefix == "", line


BIN = Path(sys.executable).parent


def test_cped_daemon_refuses_on_the_terminal(tmp_path: Path) -> None:
    """Daemon mode: a state dir held by another cped, or no way to administer the broker, is
    one line on stderr and exit status 1 before detaching (not only a line in cped.log)."""
    from cpe_agent.daemon import lock_state_dir

    env = {k: v for k, v in os.environ.items()
           if k not in ("PCLOUD_BROKER_ADMIN", "PCLOUD_BROKER_URL")}
    env.update(PCLOUD_CONFIG=str(tmp_path / "none.conf"), PCLOUD_BROKER_URL=REFUSED)
    held = lock_state_dir(tmp_path / "held")
    try:
        result = subprocess.run([str(BIN / "cped"), "--state-dir", str(tmp_path / "held")],
                                capture_output=True, text=True, env=env, timeout=60)
    finally:
        held.close()
    assert result.returncode == 1
    assert result.stderr == f"cped: another cped runs on {tmp_path / 'held'} (pid {os.getpid()})\n"
    result = subprocess.run([str(BIN / "cped"), "--state-dir", str(tmp_path / "fresh")],
                            capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 1 and result.stderr.count("\n") == 1
    assert result.stderr.startswith("cped: cped needs to administer the broker's users")
    assert not (tmp_path / "fresh" / "cped.log").exists()


def test_cped_waiting_for_its_broker_does_not_claim_it_lost_one(broker, tmp_path: Path
                                                                ) -> None:
    """A cped started before its broker says it waits for it, never that it "lost" a
    connection it never had."""
    env = dict(os.environ, PCLOUD_BROKER_URL=REFUSED, PCLOUD_CONFIG=str(tmp_path / "none"))
    cped = subprocess.Popen([str(BIN / "cped"), "--foreground", "--state-dir",
                             str(tmp_path / "state")], stderr=subprocess.PIPE, text=True,
                            env=env)
    try:
        assert cped.stderr is not None
        lines = []
        for line in cped.stderr:
            lines.append(line)
            if "waiting for the broker" in line:
                break
        assert "waiting for the broker" in lines[-1], lines
    finally:
        cped.terminate()
        rest = cped.communicate(timeout=60)[1]
    assert cped.returncode == 0
    assert "lost the broker" not in "".join(lines) + rest


def test_deadlines_follow_the_hosts_pace(monkeypatch: pytest.MonkeyPatch) -> None:
    """A busy host (a slow broker start) stretches every deadline, within bounds."""
    from support import waiting

    assert [waiting.measured_slowness(t, nominal=6) for t in (3, 6, 12, 600)] == [1, 1, 2, 5]
    before = waiting.slowness()
    try:
        waiting.set_slowness(2.0)
        assert waiting.scaled(10) == 20
        monkeypatch.setenv("PCLOUD_TEST_SLOWNESS", "3")
        waiting.set_slowness(2.0)
        assert waiting.scaled(10) == 30
    finally:
        waiting._slowness[0] = before


@pytest.mark.slow
def test_a_stopped_private_broker_is_named_with_its_remedy(tmp_path: Path) -> None:
    """cped and pcloudsh on a state dir whose pcloud-broker is stopped both say to start it."""
    from pcloud import broker as private_broker

    ports = [private_broker.free_port() for _ in range(3)]
    try:
        private_broker.start(tmp_path, port=ports[0], dist_port=ports[1], epmd_port=ports[2])
    except private_broker.NotInstalled as exc:
        pytest.skip(str(exc))
    private_broker.stop(tmp_path)
    env = {k: v for k, v in os.environ.items()
           if k not in ("PCLOUD_BROKER_ADMIN", "PCLOUD_BROKER_URL", "PCLOUD_LOG_TIME")}
    env.update(PCLOUD_STATE_DIR=str(tmp_path), PCLOUD_CONFIG=str(tmp_path / "none.conf"))
    remedy = f"the private broker of {tmp_path} is not running: pcloud-broker start"
    shell = subprocess.run([str(BIN / "pcloudsh"), "deployable_list"], capture_output=True,
                           text=True, env=env, timeout=60)
    assert shell.returncode == 1 and remedy in shell.stderr and "note:" not in shell.stderr
    cped = subprocess.Popen([str(BIN / "cped"), "--foreground"], stderr=subprocess.PIPE,
                            text=True, env=env)
    try:
        assert cped.stderr is not None
        first = cped.stderr.readline()
    finally:
        cped.terminate()
        cped.communicate(timeout=60)
    assert first.endswith(f"WARNING {remedy}\n"), first
