"""pcloud.config (broker URL order, TLS options), pcloud.log line format, addressing."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from pcloud import broker, config
from pcloud.bus import Bus, BusUnreachable
from pcloud.bus.addressing import RabbitMQProfile
from pcloud.bus.recovery import redact
from pcloud.log import setup_logging
from pcloud.urls import mask_urls


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


def _private_broker_settings(state: Path, password: str = "secret") -> broker.Settings:
    """A private broker set up in ``state`` (settings written) that is not running."""
    settings = broker.Settings(node=f"pcloud-test-{broker.free_port()}@localhost",
                               port=broker.free_port(), dist_port=broker.free_port(),
                               epmd_port=broker.free_port(), user="pcloud", password=password)
    directory = broker.broker_dir(state)
    directory.mkdir(parents=True)
    (directory / "settings.json").write_text(json.dumps(settings.__dict__))
    return settings


def test_a_stopped_private_broker_is_still_the_broker(clean_env):
    """Never a silent fall-back to whatever listens on 5672 (someone else's broker)."""
    state = clean_env / "state"
    settings = _private_broker_settings(state)
    assert not broker.is_running(state)
    assert config.broker_url() == settings.url
    message = config.unreachable(settings.url, "no answer")
    assert message == (f"cannot reach the broker at amqp://pcloud:***@127.0.0.1:{settings.port} "
                       f"(the private broker of {state} is not running: pcloud-broker start)")
    other = config.unreachable("amqp://pcloud:wrong@127.0.0.1:1", "broker "
                               "amqp://pcloud:wrong@127.0.0.1:1 refused the credentials")
    assert "wrong" not in other and other.count("amqp://pcloud:***@127.0.0.1:1") == 2


def test_deployable_list_fails_without_its_cpe(clean_env):
    state = clean_env / "state"
    settings = _private_broker_settings(state, password="hush")
    env = {k: v for k, v in os.environ.items() if k != "PCLOUD_BROKER_URL"}
    env.update(PCLOUD_STATE_DIR=str(state), PCLOUD_CONFIG=str(clean_env / "absent.conf"))
    result = subprocess.run([str(Path(sys.executable).parent / "pcloudsh"), "deployable_list"],
                            capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode != 0
    assert f"127.0.0.1:{settings.port}" in result.stderr and "pcloud-broker start" in result.stderr
    assert "5672" not in result.stderr and "hush" not in result.stderr + result.stdout


@pytest.mark.parametrize("text, masked", [
    ("amqp://u:p@h:1", "amqp://u:***@h:1"),
    ("amqp://h:5672", "amqp://h:5672"),
    ("amqp://u@h:1", "amqp://u@h:1"),
    ("at amqps://u:p@ss@h:5671/x: broker amqp://u:***@h:1 (y)",
     "at amqps://u:***@h:5671/x: broker amqp://u:***@h:1 (y)"),
    ("url 'amqp://a:b@h' and mail x@y", "url 'amqp://a:***@h' and mail x@y"),
])
def test_every_url_is_masked(text, masked):
    assert mask_urls(text) == masked
    assert redact(text) == masked


def test_log_lines_mask_passwords(capsys):
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    setup_logging("tester", level="INFO")
    try:
        logging.getLogger("pcloud.test").warning("cannot reach %s", "amqp://u:pw@h:1")
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
    assert "amqp://u:***@h:1" in capsys.readouterr().err


def test_reply_addresses_are_plain_queue_names():
    from pcloud.bus.addressing import profile_for
    profile = profile_for()
    assert profile.is_reply_address("pcloud.reply.0f3a-1")
    for bad in ("/temp-queue/x", "queue://x", "topic://x", "/topic/x", "/amq/queue/x",
                "amq.gen-x", "", "x\n", "x" * 256, None, 3):
        assert not profile.is_reply_address(bad), bad


def test_a_broker_without_amqp_1_0_is_named_as_such():
    """A RabbitMQ without its AMQP 1.0 plugin answers the protocol header with its own
    (0-9-1): that is not a credentials problem, and the error says what it is."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def answer_as_0_9_1() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.recv(8)
            conn.sendall(b"AMQP\x00\x00\x09\x01")

    threading.Thread(target=answer_as_0_9_1, daemon=True).start()
    try:
        with pytest.raises(BusUnreachable, match="does not speak AMQP 1.0"):
            Bus(url=f"amqp://u:p@127.0.0.1:{port}", name="t").start(timeout=5)
    finally:
        listener.close()


def test_a_string_user_id_is_read_where_proton_drops_it():
    """RabbitMQ 3.10 passes a 0-9-1 publisher's checked user_id on as a string; proton reads
    only binary. A binary one stays proton's, garbage gives nothing."""
    from proton import Data, Described, ulong
    from proton import Message as ProtonMessage

    from pcloud.bus.message import Message, string_user_id

    def section(code: int, value: object) -> bytes:
        data = Data()
        data.put_object(Described(ulong(code), value))
        return bytes(data.encode())

    encoded = section(0x73, [None, "alice", None, None, "pcloud.reply.x", "c1"]) + section(
        0x75, b"<deployables/>")
    decoded = ProtonMessage()
    decoded.decode(encoded)
    assert decoded.user_id == b""
    assert Message.from_proton(decoded, None, encoded).user_id == "alice"
    assert string_user_id(bytes(ProtonMessage(body=b"x", user_id=b"bob").encode())) is None
    assert string_user_id(b"\x00Ss\xc0\xff") is None
