"""pcloud.config (broker URL order, TLS options), pcloud.log line format, addressing."""

from __future__ import annotations

import logging

import pytest

from pcloud import config
from pcloud.bus.addressing import RabbitMQProfile
from pcloud.log import setup_logging


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    for name in ("PCLOUD_BROKER_URL", "PCLOUD_CONFIG", "PCLOUD_STATE_DIR", "PCLOUD_TLS_CA",
                 "PCLOUD_TLS_VERIFY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PCLOUD_CONFIG", str(tmp_path / "absent.conf"))
    monkeypatch.setenv("PCLOUD_STATE_DIR", str(tmp_path / "state"))
    return tmp_path


def test_broker_url_order(clean_env, monkeypatch):
    assert config.broker_url() == "amqp://127.0.0.1:5672"
    conf = clean_env / "pcloud.conf"
    conf.write_text("[bus]\nurl = amqp://u:p@broker.example:5672\nca = /etc/ca.pem\n")
    monkeypatch.setenv("PCLOUD_CONFIG", str(conf))
    assert config.broker_url() == "amqp://u:p@broker.example:5672"
    assert config.tls_options().ca == "/etc/ca.pem" and config.tls_options().verify
    monkeypatch.setenv("PCLOUD_BROKER_URL", "amqps://x:y@h:5671")
    monkeypatch.setenv("PCLOUD_TLS_VERIFY", "false")
    assert config.broker_url() == "amqps://x:y@h:5671"
    assert not config.tls_options().verify


def test_state_dir(clean_env, monkeypatch):
    assert config.state_dir() == clean_env / "state"
    monkeypatch.delenv("PCLOUD_STATE_DIR")
    assert str(config.state_dir()) == "/var/lib/pcloud"


def test_addresses_come_from_the_profile():
    profile = RabbitMQProfile()
    assert profile.queue("pcloud.cpe") == "pcloud.cpe"
    assert profile.topic("pcloud.event.dep1.#") == "/topic/pcloud.event.dep1.#"
    assert profile.new_reply_queue().startswith("pcloud.reply.")
    with pytest.raises(ValueError):
        profile.queue("/amq/queue/x")


def test_log_lines_are_one_event_each(capsys):
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    setup_logging("tester", level="INFO")
    try:
        raise RuntimeError("first\nsecond")
    except RuntimeError:
        logging.getLogger("pcloud.test").exception("it failed")
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("tester[") and "]: ERROR it failed | Traceback" in lines[0]
