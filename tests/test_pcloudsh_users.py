"""pcloudsh ``user_add``, ``user_list`` and ``user_remove`` against a real cped and broker:
the printed URL logs in with exactly the role asked for, and a removed login is gone."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
from signed_cpe import signed_cped
from support.cpe import deployable_xml, unique
from support.terminal import Terminal
from support.waiting import wait_until

from pcloud.bus import Bus, BusError

BIN = Path(sys.executable).parent


@pytest.fixture
def cpe(broker, tmp_path: Path):
    state = tmp_path / "state"
    env = dict(os.environ, PCLOUD_STATE_DIR=str(state), PCLOUD_BROKER_URL=broker.url)
    with signed_cped(state, broker.url) as (_cped, client):
        yield env, client


def pcloudsh(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "pcloudsh"), *args], capture_output=True, text=True,
                          env=env, timeout=60)


def ok(env: dict[str, str], *args: str) -> str:
    result = pcloudsh(env, *args)
    assert result.returncode == 0, result.stderr
    return result.stdout


def refused(env: dict[str, str], *args: str) -> str:
    """The one-line error of a command that must fail."""
    result = pcloudsh(env, *args)
    assert result.returncode == 1, result.stdout
    assert result.stderr.count("\n") == 1, result.stderr
    return result.stderr


def logs_in(url: str) -> bool:
    bus = Bus(url, name="test-login")
    try:
        bus.start(timeout=5.0)
        return True
    except BusError:
        return False
    finally:
        bus.close()


def test_observer_and_operator_logins_from_user_add(cpe, broker) -> None:
    env, client = cpe
    name = unique("users")
    client.call("deployable_start", deployable_xml(name))
    wait_until(lambda: client.status(name).get("state") == "running", 60, f"{name} running")
    watcher, boss = unique("watch"), unique("boss")

    url, warning = ok(env, "user_add", watcher, "observer").splitlines()
    assert "shown only now" in warning and watcher in warning and "observer" in warning
    given, ours = urlsplit(url), urlsplit(broker.url)
    assert (given.scheme, given.hostname, given.port) == (ours.scheme, ours.hostname, ours.port)
    assert unquote(given.username) == watcher
    assert given.password and given.password != ours.password
    as_watcher = dict(env, PCLOUD_BROKER_URL=url)

    status = ok(as_watcher, "deployable_status", name)
    assert status.splitlines()[0] == f"deployable {name}: running"
    assert json.loads(ok(as_watcher, "--json", "deployable_list"))[0]["name"] == name
    stop = refused(as_watcher, "deployable_stop", name)
    assert stop.startswith(f"pcloudsh: deployable_stop: not_authorized: user '{watcher}' is "
                           "an observer")
    assert client.status(name).get("state") == "running"
    assert "not_authorized" in refused(as_watcher, "user_add", unique("x"), "operator")
    assert "not_authorized" in refused(as_watcher, "user_list")

    table = ok(env, "user_list").splitlines()
    assert table[0].split() == ["NAME", "ROLE"]
    assert [watcher, "observer"] in [line.split() for line in table[1:]]
    assert {"name": watcher, "role": "observer"} in json.loads(ok(env, "--json", "user_list"))

    assert f"user '{watcher}' exists already" in refused(env, "user_add", watcher, "operator")
    assert "duplicate_user" in refused(env, "user_add", watcher, "observer")
    assert "invalid user name 'a.b'" in refused(env, "user_add", "a.b", "observer")
    assert "unknown role 'admin'" in refused(env, "user_add", watcher, "admin")
    assert "usage: user_add <user> operator|observer" in refused(env, "user_add", watcher)

    added = json.loads(ok(env, "--json", "user_add", boss, "operator"))
    assert (added["name"], added["role"]) == (boss, "operator")
    assert "shown only now" in added["warning"]
    as_boss = dict(env, PCLOUD_BROKER_URL=added["url"])
    assert ok(as_boss, "deployable_stop", name).strip() == f"deployable {name}: stopping"
    wait_until(lambda: client.status(name).get("state") == "stopped", 60, f"{name} stopped")

    assert ok(env, "user_remove", watcher).strip() == f"user {watcher} removed (was observer)"
    assert refused(as_watcher, "deployable_status", name).startswith(
        "pcloudsh: deployable_status: cannot reach the broker")
    assert watcher not in ok(env, "user_list")
    gone = refused(env, "user_remove", watcher)
    assert gone.startswith(f"pcloudsh: user_remove: unknown_user: no operator or observer "
                           f"named '{watcher}'")
    assert logs_in(added["url"])
    assert "cannot be removed here" in refused(as_boss, "user_remove", boss)
    ok(env, "user_remove", boss)
    assert not logs_in(added["url"])


def test_user_commands_in_the_interactive_shell(cpe, broker, tmp_path: Path) -> None:
    env, _client = cpe
    someone = unique("tab")
    term = Terminal(Path(env["PCLOUD_STATE_DIR"]), broker.url)
    try:
        term.expect("pcloudsh# ")
        term.send("user_a\t")
        term.expect("user_add ")
        term.send(f"{someone} obs\t")
        term.expect("observer ")
        term.send("\r")
        added = term.expect("pcloudsh# ")
        assert f"://{someone}:" in added and "shown only now" in added
        term.send("user_list\r")
        assert someone in term.expect("pcloudsh# ")
        term.send(f"user_remove {someone[:6]}\t")
        term.expect(f"{someone} ")
        term.send("\r")
        assert f"user {someone} removed (was observer)" in term.expect("pcloudsh# ")
        term.send(f"user_remove {someone}\r")
        assert "*** unknown_user: no operator or observer named" in term.expect("pcloudsh# ")
        term.send("help user_add\r")
        assert "usage: user_add <user> operator|observer" in term.expect("pcloudsh# ")
        term.send("quit\r")
        assert term.wait_exit() == 0
    finally:
        term.close()
