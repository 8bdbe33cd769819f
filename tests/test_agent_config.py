"""pcloud-agent refuses bad configuration with one clear line and exit code 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from guest_agent.config import ConfigError, load

AGENT = str(Path(sys.executable).with_name("pcloud-agent"))


def run_agent(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([AGENT, "--foreground", *args], capture_output=True, text=True,
                          timeout=30)


def test_missing_config_file(tmp_path):
    result = run_agent("--config", str(tmp_path / "absent.conf"))
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "absent.conf does not exist" in result.stderr


@pytest.mark.parametrize("text,words", [
    ("[agent]\nassembly = web\n", "deployable is missing"),
    ("[agent]\ndeployable = a.b\nassembly = web\n", "deployable 'a.b'"),
    ("[agent]\ndeployable = d\nassembly = w\nheartbeat_interval = soon\n", "not a number"),
    ("[agent]\ndeployable = d\nassembly = w\nbroker_url = http://x\n", "broker_url"),
    ("[agent]\ndeployable = d\nassembly = w\ncolour = blue\n", "unknown key 'colour'"),
    ("[other]\nx = 1\n", "no [agent] section"),
    ("not ini at all\n", "not valid INI"),
])
def test_bad_config_file(tmp_path, text, words):
    conf = tmp_path / "agent.conf"
    conf.write_text(text)
    result = run_agent("--config", str(conf), "--state-dir", str(tmp_path / "s"))
    assert result.returncode == 2
    assert words in result.stderr and result.stderr.strip().count("\n") == 0


def test_flags_override_file_and_uuid_is_kept(tmp_path):
    conf = tmp_path / "agent.conf"
    conf.write_text("[agent]\ndeployable = d1\nassembly = a1\nheartbeat_interval = 2\n"
                    "broker_url = amqp://h:5672\nbroker_user = u\nbroker_password = p@ss\n")
    state = str(tmp_path / "state")
    first = load(str(conf), {"assembly": "a2", "state_dir": state})
    assert (first.deployable, first.assembly, first.heartbeat_interval) == ("d1", "a2", 2.0)
    assert first.broker_url == "amqp://u:p%40ss@h:5672"
    assert first.agent_queue == "pcloud.agent.d1.a2"
    assert load(str(conf), {"state_dir": state}).uuid == first.uuid


def test_default_config_may_be_absent_when_flags_suffice(tmp_path):
    with pytest.raises(ConfigError):
        load(None, {"state_dir": str(tmp_path)})
    assert load(None, {"deployable": "d", "assembly": "a", "state_dir": str(tmp_path),
                       "broker_url": "amqp://h"}).assembly == "a"
