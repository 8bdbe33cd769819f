"""pcloud.broker and pcloud-broker: a private node that starts once, stops fully, and says so."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from support.broker import LOOPBACK, listen_addresses

from pcloud import broker
from pcloud.bus import Bus


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pcloud.broker_cli", *args],
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})})


def processes_mentioning(needle: str) -> list[str]:
    """``ps`` with environments shown (own processes): catches the node by its name."""
    out = subprocess.run(["ps", "-e", "e", "-ww", "-o", "pid=,args="], capture_output=True,
                         text=True, check=True).stdout
    return [line for line in out.splitlines() if needle in line and "ps -e" not in line]


@pytest.fixture
def node(tmp_path):
    if not (broker.RABBIT_BIN / "rabbitmq-server").exists():
        pytest.skip("RabbitMQ is not installed here")
    state = tmp_path / "state"
    yield state, broker.free_port()
    broker.stop(state)


def test_start_is_idempotent_and_stop_leaves_no_process(node):
    state, port = node
    args = ("--state-dir", str(state), "--port", str(port))
    assert cli("status", *args).returncode == 3
    first = cli("start", *args)
    assert first.returncode == 0, first.stderr
    assert f"amqp://pcloud:***@127.0.0.1:{port}" in first.stdout
    url = cli("url", *args).stdout.strip()
    assert url.startswith("amqp://pcloud:") and url.endswith(f"@127.0.0.1:{port}")
    assert url.split("@")[0].split(":")[-1] not in first.stdout     # the password
    again = cli("start", *args)
    assert again.returncode == 0 and "already running" in again.stdout
    assert "***" in again.stdout
    assert cli("status", *args).returncode == 0
    settings = broker.load_settings(state)
    assert processes_mentioning(settings.node)
    assert oct((state / "broker" / "credentials").stat().st_mode & 0o777) == "0o600"
    for private in ("ca.key", "server.key"):
        assert oct((state / "broker" / "tls" / private).stat().st_mode & 0o777) == "0o600"
    for listener in (settings.port, settings.tls_port, settings.dist_port):
        assert listen_addresses(listener) == {LOOPBACK}, listener

    tls_url = cli("url", "--tls", *args).stdout.strip()
    assert tls_url == url.replace("amqp://", "amqps://").replace(
        f"@127.0.0.1:{port}", f"@localhost:{settings.tls_port}")
    ca = cli("ca", *args)
    assert ca.returncode == 0 and ca.stdout.strip() == str(state / "broker" / "tls" / "ca.pem")
    assert f"amqps://pcloud:***@localhost:{settings.tls_port}" in first.stdout

    with Bus(url, name="test-private-node") as bus:
        assert bus.connected

    assert cli("stop", *args).returncode == 0
    assert processes_mentioning(settings.node) == []
    assert broker.node_pids(state) == []
    assert cli("status", *args).returncode == 3
    second = cli("stop", *args)
    assert second.returncode == 0 and "not running" in second.stdout


def test_restart_keeps_url_and_kill9_leaves_only_epmd(node):
    state, port = node
    url = broker.start(state, port=port)
    tls = state / "broker" / "tls"
    made = {path.name: (path.read_bytes(), path.stat().st_mtime_ns) for path in tls.iterdir()}
    tls_url = broker.load_settings(state).tls_url
    assert broker.restart(state) == url
    assert broker.load_settings(state).tls_url == tls_url
    assert {path.name: (path.read_bytes(), path.stat().st_mtime_ns)
            for path in tls.iterdir()} == made        # certificates are made once
    broker.kill9(state)
    assert not broker.is_running(state)
    remaining = broker.node_pids(state)
    assert len(remaining) == 1  # the node's own epmd, as after a crash
    assert broker.start(state) == url
    broker.stop(state)
    assert broker.node_pids(state) == []


def test_missing_rabbitmq_is_one_clear_line(tmp_path):
    result = cli("start", "--state-dir", str(tmp_path),
                 env={"PCLOUD_RABBITMQ_BIN": str(tmp_path / "nowhere")})
    assert result.returncode == 1
    assert result.stderr.strip() == "RabbitMQ is not installed: apt-get install rabbitmq-server"
