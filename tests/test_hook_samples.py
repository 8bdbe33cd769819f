"""The sample hooks of xml/hooks/, each run by the CPE's own hook runner
(cpe_agent.hooks.run_hook: the real environment and stdin) against the real thing: an HTTP
server, a syslog socket, a hosts file; and the hosts updater end to end, on an address added
inside a running sandbox's network namespace."""

from __future__ import annotations

import ctypes
import json
import os
import socket
import stat
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import support.cpe
from lxml import etree
from signed_cpe import signed_cped
from support.cpe import BIN, CpedProcess, deployable_xml, unique
from support.waiting import wait_until

from cpe_agent.hooks import Hook, run_hook

HOOKS = Path(__file__).resolve().parent.parent / "xml" / "hooks"
FAILED = {"seq": "7", "time": "2026-12-07T10:00:00.000Z", "type": "resource_state_change",
          "deployable": "dep1", "assembly": "web", "resource": "httpd", "state": "failed",
          "reason": 'process exited with signal 9\nforged="line"', "incident": "abc"}
MOVED = {"seq": "9", "time": "2026-12-07T10:00:05.000Z", "type": "assembly_address_change",
         "deployable": "dep1", "assembly": "web", "old": "10.0.2.15",
         "new": "10.0.2.16 fd00::5"}


def xml_of(event: dict[str, str]) -> bytes:
    return etree.tostring(etree.Element("event", event))


def run(name: str, *args: str, event: dict[str, str] = FAILED, timeout: float = 30.0):
    hook = Hook(name, (str(HOOKS / name), *args), timeout=timeout)
    return run_hook(hook, event, xml_of(event))


def test_samples_are_executables() -> None:
    for name in ("webhook", "hosts-update", "syslog"):
        assert os.access(HOOKS / name, os.X_OK), name


# -- webhook --------------------------------------------------------------------------------

class Recorder(BaseHTTPRequestHandler):
    received: list[tuple[dict[str, str], bytes]] = []
    status = 204

    def do_POST(self) -> None:           # noqa: N802 (http.server's naming)
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.received.append((dict(self.headers), body))
        self.send_response(self.status)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def http_server() -> Iterator[ThreadingHTTPServer]:
    Recorder.received = []
    Recorder.status = 204
    server = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def test_webhook_posts_the_event_as_json_with_the_token(http_server, tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    token.chmod(0o600)
    url = f"http://127.0.0.1:{http_server.server_port}/pcloud"
    result = run("webhook", url, "--token-file", str(token))
    assert result.exit_status == 0, result
    assert result.first_line == f"webhook: {url} answered 204"
    (headers, body), = Recorder.received
    assert headers["Authorization"] == "Bearer s3cret"
    assert headers["Content-Type"] == "application/json"
    sent = json.loads(body)
    assert sent["hook"] == "webhook" and sent["timestamp"]
    assert sent["event"] == FAILED
    assert etree.fromstring(sent["xml"].encode()).get("incident") == "abc"


def test_webhook_fails_on_an_error_answer_a_silent_server_and_a_shared_token(
        http_server, tmp_path: Path) -> None:
    Recorder.status = 500
    url = f"http://127.0.0.1:{http_server.server_port}/"
    result = run("webhook", url)
    assert result.exit_status == 1 and "answered 500" in result.first_line
    with socket.socket() as silent:             # accepts (the backlog) and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        result = run("webhook", f"http://127.0.0.1:{silent.getsockname()[1]}/",
                     "--timeout", "1")
    assert result.exit_status == 1 and "timed out" in result.first_line, result
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    token.chmod(0o644)
    result = run("webhook", url, "--token-file", str(token))
    assert result.exit_status == 1 and "readable by others" in result.first_line
    result = run("webhook", "file:///etc/passwd")
    assert result.exit_status == 2


# -- syslog ---------------------------------------------------------------------------------

def test_syslog_sends_one_quoted_line_per_event_to_the_socket(tmp_path: Path) -> None:
    path = str(tmp_path / "log.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        sock.settimeout(30)
        result = run("syslog", "--socket", path, "--tag", "pcloud-test")
        assert result.exit_status == 0, result
        line = sock.recv(65536).decode()
        result = run("syslog", "--socket", path, "--facility", "local3", event=MOVED)
        assert result.exit_status == 0, result
        moved = sock.recv(65536).decode()
    assert line.startswith("<28>pcloud-test[")         # daemon.warning: a failure
    assert "type=resource_state_change seq=7 deployable=dep1 assembly=web" in line
    assert 'reason="process exited with signal 9 forged=\\"line\\""' in line
    assert "\n" not in line
    assert moved.startswith("<158>pcloud[")            # local3.info
    assert 'old=10.0.2.15 new="10.0.2.16 fd00::5"' in moved
    assert run("syslog", "--socket", path).exit_status == 1      # nobody listens any more


# -- hosts-update ---------------------------------------------------------------------------

def test_hosts_update_replaces_the_assemblys_lines_atomically_and_idempotently(
        tmp_path: Path) -> None:
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.1 localhost\n# keep me\n10.0.2.15 web.dep1\n"
                     "10.0.2.99 db.dep1 web.dep1x\n")
    hosts.chmod(0o640)
    result = run("hosts-update", str(hosts), event=MOVED)
    assert result.exit_status == 0, result
    assert result.first_line == "hosts-update: web.dep1 -> 10.0.2.16 fd00::5"
    expected = ("127.0.0.1 localhost\n# keep me\n10.0.2.99 db.dep1 web.dep1x\n"
                "10.0.2.16 web.dep1\nfd00::5 web.dep1\n")
    assert hosts.read_text() == expected
    assert stat.S_IMODE(hosts.stat().st_mode) == 0o640
    inode = hosts.stat().st_ino
    again = run("hosts-update", str(hosts), event=MOVED)
    assert again.exit_status == 0 and "already" in again.first_line
    assert hosts.stat().st_ino == inode and hosts.read_text() == expected
    assert run("hosts-update", str(hosts)).exit_status == 0         # not an address change
    assert hosts.read_text() == expected
    gone = run("hosts-update", str(hosts), event=dict(MOVED, old=MOVED["new"], new=""))
    assert gone.exit_status == 0 and hosts.read_text() == (
        "127.0.0.1 localhost\n# keep me\n10.0.2.99 db.dep1 web.dep1x\n")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".hosts-update.")]


def test_hosts_update_refuses_bad_names_and_addresses(tmp_path: Path) -> None:
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.1 localhost\n")
    bad = run("hosts-update", str(hosts), event=dict(MOVED, new="10.0.2.16 evil\nhost"))
    assert bad.exit_status == 2 and "not an IP address" in bad.first_line
    bad = run("hosts-update", str(hosts), event=dict(MOVED, assembly="../x"))
    assert bad.exit_status == 2 and "not a valid name" in bad.first_line
    assert hosts.read_text() == "127.0.0.1 localhost\n"


# -- end to end: an address added inside a running sandbox's network namespace ------------

CLONE_NEWNET = 0x40000000


class Netns:
    """A network namespace (held by a sleeping process) with ``lo`` up, where connections
    to some ports of 127.0.0.1 are carried to the same ports of the host's 127.0.0.1: the
    broker's AMQP, Erlang distribution and epmd ports, so that a cped started inside reaches
    the session's broker and administers it with rabbitmqctl."""

    def __init__(self, ports: tuple[int, ...]) -> None:
        self.holder = subprocess.Popen(["unshare", "--net", "sleep", "3600"])
        self.path = f"/proc/{self.holder.pid}/ns/net"
        wait_until(lambda: os.readlink(self.path) != os.readlink("/proc/self/ns/net"), 10,
                   "the new network namespace")
        self.ip("link", "set", "lo", "up")
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        for port in ports:
            listener = self._listen_inside(port)
            threading.Thread(target=self._accept, args=(listener, port), daemon=True).start()

    def ip(self, *args: str) -> None:
        subprocess.run(["nsenter", f"--net={self.path}", "ip", *args], check=True)

    def _listen_inside(self, port: int) -> socket.socket:
        made: list[socket.socket] = []

        def inside() -> None:            # a thread of its own: setns moves only this thread
            with open(self.path) as ns:
                if ctypes.CDLL(None, use_errno=True).setns(ns.fileno(), CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), "setns")
            listener = socket.socket()
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind(("127.0.0.1", port))
            listener.listen(64)
            made.append(listener)

        thread = threading.Thread(target=inside)
        thread.start()
        thread.join()
        assert made, f"no listener on port {port} inside the namespace"
        self._keep(made[0])
        return made[0]

    def _keep(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.append(sock)

    def _accept(self, listener: socket.socket, port: int) -> None:
        while True:
            try:
                inner, _ = listener.accept()
                outer = socket.create_connection(("127.0.0.1", port), timeout=10)
            except OSError:
                return
            outer.settimeout(None)
            self._keep(inner)
            self._keep(outer)
            for a, b in ((inner, outer), (outer, inner)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
            sink.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def close(self) -> None:
        with self._lock:
            for sock in self._sockets:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                sock.close()
        self.holder.kill()
        self.holder.wait()


def _netns_usable() -> bool:
    if os.geteuid() != 0:
        return False
    done = subprocess.run(["unshare", "--net", "true"], capture_output=True)
    return done.returncode == 0


@pytest.mark.slow
@pytest.mark.skipif(not _netns_usable(), reason="needs root and network namespaces")
def test_an_address_added_in_a_sandbox_reaches_the_hosts_file(broker, tmp_path: Path,
                                                                monkeypatch) -> None:
    broker.require_control()             # the session's private node: its ports are known
    netns = Netns(tuple(broker.ports))
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.1 localhost\n")
    conf = tmp_path / "pcloud.conf"
    conf.write_text(f"[hook hosts]\nexec = {HOOKS / 'hosts-update'} {hosts}\n"
                    "types = assembly_address_change\n")
    monkeypatch.setenv("PCLOUD_CONFIG", str(conf))

    class CpedInNetns(CpedProcess):
        """cped, hence its dpeds and their sandboxes, inside the namespace."""

        def start(self, client) -> None:
            self.state_dir.mkdir(parents=True, exist_ok=True)
            with open(self.log, "ab") as log:
                self.proc = subprocess.Popen(
                    ["nsenter", f"--net={netns.path}", str(BIN / "cped"), "--foreground",
                     "--state-dir", str(self.state_dir)], stdout=log, stderr=log,
                    env=self.env())
            wait_until(lambda: self._answers(client), 60, "cped to answer deployables_list")

    monkeypatch.setattr(support.cpe, "CpedProcess", CpedInNetns)
    name = unique("addr")
    try:
        with signed_cped(tmp_path / "state", broker.url) as (_cped, client):
            client.call("deployable_start", deployable_xml(name, {"web": ["s1"]}))
            wait_until(lambda: client.status(name).get("state") == "running", 90,
                       "the deployable to run")

            def changes() -> list[etree._Element]:
                found = client.call("events_query", f'<events deployable="{name}"/>')
                return [e for e in found if e.get("type") == "assembly_address_change"]

            def hosts_lines() -> list[str]:
                return hosts.read_text().splitlines()

            netns.ip("addr", "add", "10.77.0.5/32", "dev", "lo")
            wait_until(lambda: f"10.77.0.5 web.{name}" in hosts_lines(), 60,
                       "the hook to write the new address")
            first, = changes()
            assert (first.get("assembly"), first.get("old"), first.get("new")) == (
                "web", "", "10.77.0.5")
            web, = client.status(name).iter("assembly")
            assert web.get("addresses") == "10.77.0.5"

            netns.ip("addr", "del", "10.77.0.5/32", "dev", "lo")
            netns.ip("addr", "add", "fd00:77::6/128", "dev", "lo")
            wait_until(lambda: hosts_lines() == ["127.0.0.1 localhost",
                                                 f"fd00:77::6 web.{name}"], 60,
                       "the hook to replace the address")
            assert changes()[-1].get("old") == "10.77.0.5"
            assert changes()[-1].get("new") == "fd00:77::6"
    finally:
        netns.close()
