"""amqps:// with PLAIN on a private node with a TLS listener; the peer name is verified."""

from __future__ import annotations

import subprocess

import pytest

from pcloud import broker
from pcloud.bus import Bus, BusError


def openssl(*args: str, cwd) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def tls_node(tmp_path_factory):
    if not (broker.RABBIT_BIN / "rabbitmq-server").exists():
        pytest.skip("RabbitMQ is not installed here")
    certs = tmp_path_factory.mktemp("certs")
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
            "/CN=pcloud test CA", "-keyout", "ca.key", "-out", "ca.pem", cwd=certs)
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost",
            "-keyout", "server.key", "-out", "server.csr", cwd=certs)
    (certs / "ext.cnf").write_text("subjectAltName=DNS:localhost\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-days", "2", "-extfile", "ext.cnf", "-out", "server.pem",
            cwd=certs)
    state = tmp_path_factory.mktemp("tls-broker")
    tls_port = broker.free_port()
    url = broker.start(state, port=broker.free_port(),
                       tls=(tls_port, str(certs / "server.pem"), str(certs / "server.key")))
    creds = url.split("://", 1)[1].split("@", 1)[0]
    yield f"amqps://{creds}@localhost:{tls_port}", certs
    broker.stop(state)


def test_amqps_with_a_trusted_ca_works(tls_node, monkeypatch):
    url, certs = tls_node
    monkeypatch.setenv("PCLOUD_TLS_CA", str(certs / "ca.pem"))
    with Bus(url, name="test-tls") as bus:
        bus.serve("pcloud.test.tls", {"echo": lambda body, msg: body}).wait_attached()
        assert bus.call("pcloud.test.tls", "echo", "<secure/>").tag == "secure"


def test_amqps_refuses_an_untrusted_certificate(tls_node, monkeypatch):
    url, _certs = tls_node
    monkeypatch.delenv("PCLOUD_TLS_CA", raising=False)
    with pytest.raises(BusError, match="not trusted"):
        Bus(url, name="test-tls-untrusted").start(timeout=30)
