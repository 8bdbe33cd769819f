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


def _vm_handover(tmp_path: Path, broker_url: str) -> Path:
    """The fw_cfg file a VM driver writes for one boot (its login, and TLS for amqps)."""
    from dpe_agent.drivers.base import AssemblySpec
    from dpe_agent.drivers.vmboot import credentials_option
    from pcloud.identity import Credentials

    spec = AssemblySpec("d", "web", "u", broker_url, tmp_path / "dpe",
                        credentials=Credentials("agent-d-web-1", "s3cret"))
    return Path(credentials_option(spec).partition("file=")[2])


def test_an_amqps_vm_boot_hands_over_the_ca_and_the_brokers_name(tmp_path, monkeypatch):
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
    monkeypatch.setenv("PCLOUD_TLS_CA", str(ca))
    fw_cfg = _vm_handover(tmp_path, "amqps://broker.example:5671")
    conf = tmp_path / "agent.conf"
    conf.write_text("[agent]\ndeployable = d\nassembly = web\ncredentials = fw_cfg\n"
                    "broker_url = amqps://10.0.2.100:5671\n")
    config = load(str(conf), {"state_dir": str(tmp_path / "agent")}, fw_cfg=str(fw_cfg))
    assert config.broker_url == "amqps://agent-d-web-1:s3cret@10.0.2.100:5671"
    assert config.tls.server_name == "broker.example"        # what the certificate names
    assert Path(config.tls.ca).read_text() == ca.read_text() and config.tls.verify


def test_a_plain_amqp_vm_boot_hands_over_no_tls(tmp_path):
    fw_cfg = _vm_handover(tmp_path, "amqp://broker.example:5672")
    assert "tls_" not in fw_cfg.read_text()
    config = load(None, {"deployable": "d", "assembly": "web", "credentials": "fw_cfg",
                         "broker_url": "amqp://10.0.2.100:5672",
                         "state_dir": str(tmp_path / "agent")}, fw_cfg=str(fw_cfg))
    assert config.tls is None


@pytest.mark.parametrize("extra, words", [
    ("tls_ca=not base64!\n", "tls_ca is not base64"),
    ("tls_ca=aGVsbG8=\n", "no PEM certificate"),
    ("tls_server_name=a b\n", "is not a host name"),
])
def test_bad_tls_in_a_boots_handover_is_one_clear_error(tmp_path, extra, words):
    handover = tmp_path / "credentials"
    handover.write_text(f"user=u\npassword=p\n{extra}")
    with pytest.raises(ConfigError, match=words):
        load(None, {"deployable": "d", "assembly": "web", "credentials": str(handover),
                    "broker_url": "amqps://10.0.2.100:5671",
                    "state_dir": str(tmp_path / "agent")})
