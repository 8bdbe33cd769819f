"""A ``process`` resource run as an unprivileged user, inside a real sandbox under a real cped:
it runs with that uid, its death is still noticed and repaired, it dies with its sandbox, and
an account that does not exist is refused with ``invalid_parameter``."""

from __future__ import annotations

import json
import os
import pwd
import signal
from pathlib import Path

import pytest
from signed_cpe import BusClient, signed_cped
from support.cpe import _sleep_arg, _zombie, service_pid, unique
from support.waiting import wait_until

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs root")


def _document(name: str, user: str) -> str:
    return (f'<deployable name="{name}" infrastructure="process"><assemblies>'
            '<assembly name="a1" heartbeat_interval="0.5"><services>'
            '<service name="s1" class="process" monitor_interval="1"><parameters>'
            f'<parameter name="command" value="sleep {_sleep_arg(name, "a1", "s1")}"/>'
            f'<parameter name="user" value="{user}"/>'
            '</parameters></service></services></assembly></assemblies></deployable>')


def _uid(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return int(next(line for line in f if line.startswith("Uid:")).split()[1])


def _gone(pid: int) -> bool:
    return not os.path.exists(f"/proc/{pid}") or _zombie(pid)


def _running(client: BusClient, name: str) -> None:
    wait_until(lambda: client.status(name).get("state") == "running", 60, f"{name} running")


def test_service_runs_as_nobody_and_dies_with_its_sandbox(broker, tmp_path: Path) -> None:
    state = tmp_path / "state"
    nobody = pwd.getpwnam("nobody").pw_uid
    name = unique("asuser")
    with signed_cped(state, broker.url) as (_cped, client):
        client.call("deployable_start", _document(name, "nobody"))
        _running(client, name)
        pid = wait_until(lambda: service_pid(state, name, "a1", "s1"), 30, "the service")
        assert _uid(pid) == nobody

        os.kill(pid, signal.SIGKILL)              # the agent's reaper sees it and restarts it
        again = wait_until(lambda: (service_pid(state, name, "a1", "s1") or pid) != pid
                           and service_pid(state, name, "a1", "s1"), 30, "a restarted service")
        assert _uid(again) == nobody
        _running(client, name)

        sandbox_file = state / "dpe" / name / "assemblies" / "a1" / "sandbox.pid"
        sandbox = json.loads(sandbox_file.read_text())["pid"]
        os.kill(sandbox, signal.SIGKILL)          # the assembly dies as a VM would
        wait_until(lambda: _gone(again), 10, "the nobody process to die with its sandbox")
        _running(client, name)
        last = wait_until(lambda: service_pid(state, name, "a1", "s1"), 30, "the service back")
        assert last != again and _uid(last) == nobody

        client.call("deployable_stop", f'<deployable name="{name}"/>')
        wait_until(lambda: client.status(name).get("state") == "stopped", 30, f"{name} stopped")
        wait_until(lambda: _gone(last), 10, "the service to stop")


def test_unknown_user_is_refused_as_invalid_parameter(broker, tmp_path: Path) -> None:
    state = tmp_path / "state"
    name = unique("nouser")
    with signed_cped(state, broker.url) as (_cped, client):
        client.call("deployable_start", _document(name, "no-such-user-xyz"))
        reason = wait_until(lambda: "invalid_parameter" in _reasons(client, name)
                            and _reasons(client, name), 60, "the refusal in the status")
        assert "user 'no-such-user-xyz' does not exist" in reason
        # The DPE fences the assembly when the resource cannot even be stopped: give the stop
        # the sandbox's full stop timeout.
        client.call("deployable_stop", f'<deployable name="{name}"/>')
        wait_until(lambda: client.status(name).get("state") == "stopped", 90, f"{name} stopped")


def _reasons(client: BusClient, name: str) -> str:
    """Every reason and last failure the deployable's status carries, on one line."""
    status = client.status(name)
    return " | ".join(f"{k}={v}" for e in status.iter() for k, v in e.attrib.items()
                      if k in ("reason", "last_failure", "last_failure_reason"))
