"""The CPE harness: a plain AMQP 1.0 client and a cped runner for the CPE tests.

The client speaks only the public contract (docs/protocol.md) with qpid-proton's blocking API, none
of pcloud's own bus code, so the tests check what any other program would see. Cleanup kills
only processes that name the test's own state directory.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from lxml import etree
from proton import Message
from proton.utils import BlockingConnection

from pcloud.broker import free_port
from pcloud.bus.bus import login_of
from support.events import Collector
from support.waiting import wait_until

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
EXAMPLES = ROOT / "xml" / "examples"


def xml_of(body: str | bytes | memoryview) -> etree._Element:
    """A received body: a data section (bytes, what pcloud sends) or an amqp-value string."""
    return etree.fromstring(body.encode() if isinstance(body, str) else bytes(body))


class AmqpClient:
    """Request/response on plain queues, the way DESIGN §3 describes it for RabbitMQ, with
    ``user_id`` = the URL's login on every request. A body goes as given (a str as an
    amqp-value, bytes as a data section); each answer's envelope is checked (its subject is
    the method, its opcode ``method_response``)."""

    #: ``limit`` of ``events_query`` (None: the CPE's default)
    EVENTS_LIMIT: int | None = None

    def __init__(self, url: str) -> None:
        self.conn = BlockingConnection(url, timeout=15, allowed_mechs="PLAIN")
        self.user = login_of(url) or ""
        self.user_id = self.user.encode()   # the broker checks it is ours
        self.reply_to = f"pcloud.reply.{uuid.uuid4()}"
        self.receiver = self.conn.create_receiver(self.reply_to)
        self.senders: dict[str, object] = {}

    def close(self) -> None:
        with suppress(Exception):
            self.conn.close()

    def send_raw(self, queue: str, subject: str | None, body: object,
                 opcode: str = "method_request") -> str:
        sender = self.senders.get(queue)
        if sender is None:
            sender = self.senders[queue] = self.conn.create_sender(queue)
        cid = str(uuid.uuid4())
        sender.send(Message(body=body, subject=subject, reply_to=self.reply_to,
                            correlation_id=cid, id=cid, content_type="application/xml",
                            properties={"pcloud.opcode": opcode}, user_id=self.user_id))
        return cid

    def request(self, queue: str, method: str | None, body: object,
                timeout: float = 15.0) -> etree._Element:
        """Send one request and return the ``<response>`` root element."""
        cid = self.send_raw(queue, method, body)
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no response to {method} on {queue} within {timeout} s")
            msg = self.receiver.receive(timeout=remaining)
            self.receiver.accept()
            if str(msg.correlation_id) == cid:
                self.check_envelope(msg, method)
                return xml_of(msg.body)

    def check_envelope(self, msg: Message, method: str | None) -> None:
        assert msg.subject == method
        assert msg.properties["pcloud.opcode"] == "method_response"

    def call(self, method: str, body: object, queue: str = "pcloud.cpe",
             timeout: float = 15.0) -> etree._Element:
        """A CPE method that must succeed: return the result element (or None)."""
        response = self.request(queue, method, body, timeout)
        assert response.get("rc") == "0", etree.tostring(response, encoding="unicode")
        return response[0] if len(response) else None

    def error(self, method: str | None, body: object, queue: str = "pcloud.cpe"
              ) -> tuple[str, str]:
        """A request that must fail: return its (code, message)."""
        response = self.request(queue, method, body)
        assert response.get("rc") != "0", etree.tostring(response, encoding="unicode")
        error = response.find("error")
        assert error is not None
        return error.get("code"), error.get("message")

    def status(self, name: str) -> etree._Element:
        return self.call("deployable_status", f'<deployable name="{name}"/>')

    def listing(self) -> dict[str, str]:
        result = self.call("deployables_list", "<deployables/>")
        return {d.get("name"): d.get("state") for d in result}

    def events(self, name: str | None = None, since: int = 0) -> list[etree._Element]:
        attrs = f' deployable="{name}"' if name else ""
        limit = "" if self.EVENTS_LIMIT is None else f' limit="{self.EVENTS_LIMIT}"'
        return list(self.call("events_query", f'<events{attrs} since_seq="{since}"{limit}/>'))


class EventWatcher(Collector[etree._Element]):
    """Receives events on ``/topic/pcloud.event.#`` on a connection of its own (a collector
    that pulls: its waits receive)."""

    def __init__(self, url: str, key: str = "pcloud.event.#") -> None:
        super().__init__(lambda msg: xml_of(msg.body), pull=self._receive)
        self.conn = BlockingConnection(url, timeout=15, allowed_mechs="PLAIN")
        self.receiver = self.conn.create_receiver(f"/topic/{key}")

    def close(self) -> None:
        with suppress(Exception):
            self.conn.close()

    def _receive(self, seconds: float) -> None:
        try:
            msg = self.receiver.receive(timeout=max(0.05, seconds))
        except Exception:
            return
        self.receiver.accept()
        self(msg)

    @property
    def seen(self) -> list[etree._Element]:
        return self.items

    def wait_for(self, predicate: Callable[[etree._Element], object], timeout: float,
                 what: str) -> etree._Element:
        return self.wait(predicate, timeout, f"event {what}")


def processes_using(marker: str) -> list[int]:
    """Pids whose command line or environment names ``marker`` (a test's state dir)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        for part in ("cmdline", "environ"):
            with suppress(OSError):
                if marker.encode() in Path(f"/proc/{entry}/{part}").read_bytes():
                    found.append(int(entry))
                    break
    return found


def kill_all_using(marker: str) -> None:
    for pid in processes_using(marker):
        with suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    wait_until(lambda: not [p for p in processes_using(marker) if not _zombie(p)], 10,
               f"processes of {marker} to die")


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


class CpedProcess:
    """``cped --foreground`` on a private state directory."""

    def __init__(self, state_dir: Path, url: str) -> None:
        self.state_dir = state_dir
        self.url = url
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = state_dir / "cped-test.log"

    def env(self) -> dict[str, str]:
        return dict(os.environ, PCLOUD_BROKER_URL=self.url, PCLOUD_STATE_DIR=str(self.state_dir),
                    PCLOUD_LOG_LEVEL="DEBUG")

    def start(self, client: AmqpClient) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([str(BIN / "cped"), "--foreground", "--state-dir",
                                          str(self.state_dir)], stdout=log, stderr=log,
                                         env=self.env())
        wait_until(lambda: self._answers(client), 30, "cped to answer deployables_list")

    def _answers(self, client: AmqpClient) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"cped exited {self.proc.returncode}: {self.log.read_text()}")
        try:
            client.request("pcloud.cpe", "deployables_list", "<deployables/>", timeout=3)
            return True
        except AssertionError:
            return False

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)

    def terminate(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


@contextmanager
def running_cped(state_dir: Path, url: str, client_type: Callable[[str], Any] = AmqpClient,
                 stop_timeout: float = 30.0) -> Iterator[tuple[CpedProcess, Any]]:
    """A cped and a client (``client_type(url)``: anything with ``request``, ``listing`` and
    ``close``); afterwards every deployable is stopped and nothing is left."""
    client = client_type(url)
    cped = CpedProcess(state_dir, url)
    try:
        cped.start(client)
        yield cped, client
    finally:
        try:
            if cped.proc is not None and cped.proc.poll() is None:
                for name, state in client.listing().items():
                    if state != "stopped":
                        client.request("pcloud.cpe", "deployable_stop",
                                       f'<deployable name="{name}"/>')
                wait_until(lambda: all(s == "stopped" for s in client.listing().values()),
                           stop_timeout, "every deployable to stop")
        finally:
            cped.terminate()
            client.close()
            kill_all_using(str(state_dir))


def _sleep_arg(dep: str, asm: str, svc: str) -> str:
    return f"{3600 + zlib.crc32(f'{dep}/{asm}/{svc}'.encode()) % 100000}.7"


def service_pid(state_dir: Path, dep: str, asm: str, svc: str) -> int | None:
    """The host pid of a service started by ``deployable_xml`` (None when not running)."""
    needle = f"sleep {_sleep_arg(dep, asm, svc)}"
    pids = [p for p in processes_using(str(state_dir))
            if not _zombie(p) and needle in _cmdline(p)]
    return pids[0] if len(pids) == 1 else None


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except (OSError, UnicodeDecodeError):
        return ""


def unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:8]}"


def deployable_xml(name: str, services: dict[str, list[str]] | None = None,
                   dependency: tuple[str, str] | None = None) -> str:
    """A small ``process`` deployable; service ``s`` of assembly ``a`` runs ``sleep`` with an
    argument of its own (see ``service_pid``)."""
    services = services or {"a1": ["s1"]}
    parts = [f'<deployable name="{name}" infrastructure="process"><assemblies>']
    for asm, svcs in services.items():
        parts.append(f'<assembly name="{asm}" heartbeat_interval="0.5"><services>')
        for svc in svcs:
            parts.append(f'<service name="{svc}" class="process" monitor_interval="1">'
                         '<parameters><parameter name="command" '
                         f'value="sleep {_sleep_arg(name, asm, svc)}"/>'
                         '</parameters></service>')
        parts.append("</services></assembly>")
    parts.append("</assemblies>")
    if dependency:
        parts.append(f'<constraints><service_dependency id="d1" first="{dependency[0]}" '
                     f'then="{dependency[1]}"/></constraints>')
    parts.append("</deployable>")
    return "".join(parts)


def switched_on(section: str, tmp_path: Path, monkeypatch) -> int:
    """A config file whose ``[section] listen`` is a free local port, for the cped to come."""
    port = free_port()
    conf = tmp_path / "pcloud.conf"
    conf.write_text(f"[{section}]\nlisten = 127.0.0.1:{port}\n")
    monkeypatch.setenv("PCLOUD_CONFIG", str(conf))
    return port
