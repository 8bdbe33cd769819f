"""amqps:// with PLAIN on the private node's own TLS listener; the peer name is verified.

The session broker is a private node, which listens on amqps by default with a certificate
for ``localhost`` signed by its own CA (``pcloud-broker ca``).
"""

from __future__ import annotations

import subprocess

import pytest

from pcloud import broker as private_broker
from pcloud.bus import Bus, BusError


@pytest.fixture(scope="module")
def tls_node(broker):
    settings = private_broker.load_settings(broker.require_control())
    assert settings.tls_url and settings.tls_ca
    return settings


def test_the_certificate_names_localhost_and_chains_to_the_ca(tls_node):
    text = subprocess.run(["openssl", "x509", "-in", tls_node.tls_cert, "-noout", "-text"],
                          capture_output=True, text=True, check=True).stdout
    assert "DNS:localhost" in text and "IP Address:127.0.0.1" in text
    verified = subprocess.run(["openssl", "verify", "-CAfile", tls_node.tls_ca,
                               tls_node.tls_cert], capture_output=True, text=True)
    assert verified.returncode == 0, verified.stderr


def test_amqps_verified_by_name_against_the_ca_works(tls_node, monkeypatch):
    monkeypatch.setenv("PCLOUD_TLS_CA", tls_node.tls_ca)
    with Bus(tls_node.tls_url, name="test-tls") as bus:
        bus.serve("pcloud.test.tls", {"echo": lambda body, msg: body}).wait_attached()
        assert bus.call("pcloud.test.tls", "echo", "<secure/>").tag == "secure"


def test_the_ca_may_come_from_the_config_file(tls_node, monkeypatch, tmp_path):
    config = tmp_path / "pcloud.conf"
    config.write_text(f"[bus]\nca = {tls_node.tls_ca}\n")
    monkeypatch.delenv("PCLOUD_TLS_CA", raising=False)
    monkeypatch.delenv("PCLOUD_TLS_VERIFY", raising=False)
    monkeypatch.setenv("PCLOUD_CONFIG", str(config))
    with Bus(tls_node.tls_url, name="test-tls-config") as bus:
        assert bus.connected


def test_amqps_without_the_ca_is_refused(tls_node, monkeypatch, tmp_path):
    monkeypatch.delenv("PCLOUD_TLS_CA", raising=False)
    monkeypatch.delenv("PCLOUD_TLS_VERIFY", raising=False)
    monkeypatch.setenv("PCLOUD_CONFIG", str(tmp_path / "absent.conf"))
    with pytest.raises(BusError, match="not trusted"):
        Bus(tls_node.tls_url, name="test-tls-untrusted").start(timeout=30)



def test_the_certificate_is_verified_against_the_server_name_when_one_is_given(tls_node,
                                                                              monkeypatch):
    """A VM reaches the broker at a forward address the certificate does not name: the name
    it must carry is given apart (``server_name``), and that name is what is verified."""
    monkeypatch.setenv("PCLOUD_TLS_CA", tls_node.tls_ca)
    by_address = tls_node.tls_url.replace("localhost", "127.0.0.1")
    assert by_address != tls_node.tls_url
    with Bus(by_address, name="test-tls-sni", server_name="localhost") as bus:
        assert bus.connected
    with pytest.raises(BusError, match="not trusted|certificate|verify|name"):
        Bus(tls_node.tls_url, name="test-tls-wrong-name",
            server_name="broker.invalid").start(timeout=30)
