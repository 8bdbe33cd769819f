"""Garbage on every queue and topic of a running deployable (docs/architecture.md, "Bad input").

A cped runs one ``process`` deployable of three assemblies; a plain proton client (no pcloud
bus code) sends bad input to ``pcloud.cpe``, ``pcloud.dpe.<dep>``, ``pcloud.agent.<dep>.<asm>``
and the heartbeat, report and event topics. Each request must get an error response with its
code, topic garbage must be dropped with a log line, and after every test the daemons are the
same processes, every resource has the pid it had, and the deployable's only new events are
``config_error``.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from lxml import etree
from proton import Message
from support.cpe import (
    AmqpClient,
    CpedProcess,
    EventWatcher,
    deployable_xml,
    running_cped,
    service_pid,
    unique,
    xml_of,
)
from support.waiting import wait_until

SERVICES = {"a1": ["s1"], "a2": ["s2"], "a3": ["s3"]}
BOMB = ('<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
        '<!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">'
        '<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">]>'
        '<deployable name="&lol3;"/>')
EXTERNAL = ('<?xml version="1.0"?><!DOCTYPE d [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
            '<deployable name="&x;"/>')
HUGE = "<deployable name='x'>" + "<a/>" * (2 * 1024 * 1024 // 4) + "</deployable>"
BINARY = bytes(range(256)) * 64

#: Bodies no queue may accept, whatever the method: (id, body).
GARBAGE = [
    ("not-xml", "this is not XML at all"),
    ("truncated", "<deployable name='x'"),
    ("empty", ""),
    ("entity-bomb", BOMB),
    ("external-entity", EXTERNAL),
    ("huge-2MiB", HUGE),
    ("binary", BINARY),
    ("amqp-map", {"deployable": "x"}),
]


@dataclass
class Target:
    """The running deployable under attack and what must not change."""

    cped: CpedProcess
    client: AmqpClient
    watcher: EventWatcher
    name: str
    uuids: dict[str, str]
    agent_replies: tuple[str, object] | None = None

    @property
    def dpe_dir(self) -> Path:
        return self.cped.state_dir / "dpe" / self.name

    def dpe_pid(self) -> int:
        return int((self.dpe_dir / "dped.pid").read_text())

    def dpe_log(self) -> str:
        return (self.dpe_dir / "dped.log").read_text(errors="replace")

    def pids(self) -> dict[str, int | None]:
        """cped, dped and every service: the identity of everything that runs."""
        assert self.cped.proc is not None
        found: dict[str, int | None] = {"cped": self.cped.proc.pid, "dped": self.dpe_pid()}
        for asm, services in SERVICES.items():
            for svc in services:
                found[svc] = service_pid(self.cped.state_dir, self.name, asm, svc)
        return found

    def last_seq(self) -> int:
        return max((int(e.get("seq")) for e in self.client.events(self.name)), default=0)

    def _replies(self, address: str) -> tuple[str, object]:
        """Where the answer to a request on ``address`` comes: an agent answers only on its
        DPE's reply topic (it may write to no queue), everyone else on our reply queue."""
        if not address.startswith("pcloud.agent."):
            return self.client.reply_to, self.client.receiver
        if self.agent_replies is None:
            key = f"/topic/pcloud.reply.dpe.{self.name}.{uuid.uuid4().hex[:16]}"
            self.agent_replies = (key, self.client.conn.create_receiver(key))
        return self.agent_replies

    def send(self, address: str, body: object, subject: str | None = "deployable_status",
             opcode: str | None = "method_request", reply_to: bool = True) -> str:
        """One raw message; returns its correlation id."""
        sender = self.client.senders.get(address)
        if sender is None:
            sender = self.client.senders[address] = self.client.conn.create_sender(address)
        cid = unique("hostile-")
        properties = {"pcloud.opcode": opcode} if opcode is not None else None
        sender.send(Message(body=body, subject=subject, id=cid, correlation_id=cid,
                            reply_to=self._replies(address)[0] if reply_to else None,
                            content_type="application/xml", properties=properties,
                            user_id=self.client.user_id))
        return cid

    def request(self, address: str, method: str | None, body: object,
                opcode: str = "method_request") -> etree._Element:
        """Send a request; its ``<response>``."""
        cid = self.send(address, body, method, opcode)
        receiver = self._replies(address)[1]
        while True:
            msg = receiver.receive(timeout=15)
            receiver.accept()
            if str(msg.correlation_id) == cid:
                return xml_of(msg.body)

    def error(self, queue: str, method: str | None, body: object,
              opcode: str = "method_request") -> tuple[str, str]:
        """Send a request that must fail; its (code, message)."""
        response = self.request(queue, method, body, opcode)
        text = etree.tostring(response, encoding="unicode")
        assert response.tag == "response" and response.get("rc") != "0", text
        error = response.find("error")
        assert error is not None, text
        return error.get("code"), error.get("message")


@pytest.fixture(scope="module")
def deployed(broker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target | str]:
    """The running deployable, or why it could not be started (see ``target``)."""
    state = tmp_path_factory.mktemp("hostile")
    name = unique("hostile")
    watcher = EventWatcher(broker.url, f"pcloud.event.{name}.#")
    yielded = False
    try:
        with running_cped(state, broker.url) as (cped, client):
            client.call("deployable_start", deployable_xml(name, SERVICES))
            wait_until(lambda: client.status(name).get("state") == "running", 90,
                       f"{name} running")
            uuids = {a.get("name"): a.get("uuid") for a in client.status(name)}
            yielded = True
            yield Target(cped, client, watcher, name, uuids)
    except Exception as exc:
        if yielded:
            raise
        yield f"{type(exc).__name__}: {exc}"
    finally:
        watcher.close()


_failure_reported: list[str] = []


@pytest.fixture
def target(deployed: Target | str) -> Target:
    """The deployable under attack. Had it failed to start, the first test says why (one
    error) and the others are skipped, instead of the module's every test erroring on it."""
    if isinstance(deployed, Target):
        return deployed
    if not _failure_reported:
        _failure_reported.append(deployed)
        pytest.fail(f"the deployable under attack did not start: {deployed}")
    pytest.skip("the deployable under attack did not start (the module's first test says why)")


@pytest.fixture(autouse=True)
def untouched(target: Target) -> Iterator[None]:
    """Whatever the test sent, everything survived (cped and dped still run: what the
    module's last test used to check, once, after all the others), nothing that ran was
    restarted and nothing changed state."""
    before = target.pids()
    assert all(before.values()), before
    since = target.last_seq()
    yield
    assert target.cped.proc is not None and target.cped.proc.poll() is None
    os.kill(target.dpe_pid(), 0)
    assert target.pids() == before
    status = target.client.status(target.name)
    assert status.get("state") == "running"
    assert {r.get("state") for r in status.iter("resource")} == {"running"}
    assert {e.get("type") for e in target.client.events(target.name, since)} <= {"config_error"}


def queues(target: Target) -> dict[str, str]:
    return {"cpe": "pcloud.cpe", "dpe": f"pcloud.dpe.{target.name}",
            "agent": f"pcloud.agent.{target.name}.a1"}


@pytest.mark.parametrize("queue", ["cpe", "dpe", "agent"])
@pytest.mark.parametrize("body", [b for _, b in GARBAGE], ids=[i for i, _ in GARBAGE])
def test_garbage_bodies_get_malformed_xml(target: Target, queue: str, body: object) -> None:
    method = "resource_status" if queue == "agent" else "deployable_status"
    code, message = target.error(queues(target)[queue], method, body)
    assert code == "malformed_xml", message


@pytest.mark.parametrize("queue", ["cpe", "dpe", "agent"])
def test_unknown_and_missing_methods(target: Target, queue: str) -> None:
    address = queues(target)[queue]
    code, message = target.error(address, "deployable_explode", "<deployable name='x'/>")
    assert code == "unknown_method" and "deployable_explode" in message
    assert target.error(address, None, "<deployable name='x'/>")[0] == "unknown_method"


@pytest.mark.parametrize("queue", ["cpe", "dpe", "agent"])
@pytest.mark.parametrize("opcode", ["event", "heartbeat", "method_response", "nonsense"])
def test_wrong_opcode_is_refused(target: Target, queue: str, opcode: str) -> None:
    method = "resource_status" if queue == "agent" else "deployables_list"
    body = "<resources/>" if queue == "agent" else "<deployables/>"
    code, message = target.error(queues(target)[queue], method, body, opcode=opcode)
    assert code == "invalid_opcode" and opcode in message


@pytest.mark.parametrize("queue, method, body, code", [
    ("cpe", "deployable_status", "<service name='s1' class='process'/>", "invalid_request"),
    ("cpe", "deployable_stop", "<deployable name='x' force='yes'/>", "invalid_request"),
    ("cpe", "events_query", "<events limit='-1'/>", "invalid_request"),
    ("dpe", "deployable_status", "<service name='s1' class='process'/>", "invalid_request"),
    ("dpe", "deployable_status", "<deployable name='x' force='yes'/>", "invalid_request"),
    ("dpe", "deployable_stop", "<deployable name='someone_else'/>", "wrong_deployable"),
    ("dpe", "deployable_stop", "<deployables/>", "invalid_request"),
    ("dpe", "deployable_reload", "<service name='s1' class='process'/>", "invalid_request"),
    ("dpe", "deployable_reload", "<deployable name='{dep}'><assemblies><assembly name='a1'>"
     "<services><service name='s1' class='magic'/></services></assembly></assemblies>"
     "</deployable>", "invalid_deployable"),
    ("dpe", "event_raise", "<event deployable='{dep}'/>", "invalid_request"),
    ("dpe", "event_raise", "<event type='deployable_state_change' deployable='{dep}' "
     "state='failed'/>", "invalid_request"),
    ("dpe", "event_raise", "<event type='config_error' deployable='someone_else'/>",
     "wrong_deployable"),
    ("dpe", "events_query", "<events since_seq='yesterday'/>", "invalid_request"),
    ("agent", "resource_status", "<deployable name='x'/>", "invalid_request"),
    ("agent", "agent_info", "<resources/>", "invalid_request"),
    ("agent", "resource_start", "<resource_op operation='start' interval='soon'>"
     "<resource name='s1' class='process'/></resource_op>", "invalid_request"),
    ("agent", "resource_stop", "<resource_op operation='start'><resource name='s1' "
     "class='process'/></resource_op>", "invalid_request"),
    ("agent", "resource_stop", "<resource_op operation='stop'><resource name='s1' "
     "class='magic'/></resource_op>", "invalid_request"),
])
def test_wrong_documents_are_refused(target: Target, queue: str, method: str, body: str,
                                     code: str) -> None:
    """A well-formed request the schema refuses. An agent takes requests only from its DPE:
    anyone else is refused before the body is looked at (its body checks are covered in
    test_agent_bus and test_agent_server, where the test plays the DPE)."""
    got, message = target.error(queues(target)[queue], method, body.format(dep=target.name))
    assert got == ("not_authorized" if queue == "agent" else code), message


@pytest.mark.parametrize("queue", ["cpe", "dpe", "agent"])
def test_a_request_without_reply_to_is_dropped_and_the_server_keeps_serving(
        target: Target, queue: str) -> None:
    address = queues(target)[queue]
    method, body = (("agent_info", "<agent/>") if queue == "agent"
                    else ("deployable_status", f"<deployable name='{target.name}'/>"))
    target.send(address, body, method, reply_to=False)
    response = target.request(address, method, body)       # answered: it keeps serving
    if queue == "agent":        # and answers no one but its DPE
        assert response.find("error").get("code") == "not_authorized"
    else:
        assert response.get("rc") == "0"


def _beat(target: Target, asm: str, uuid: str | None, seq: int = 1) -> str:
    attrs = f' uuid="{uuid}"' if uuid else ""
    return (f'<heartbeat deployable="{target.name}" assembly="{asm}"{attrs} seq="{seq}" '
            'started="2026-01-01T00:00:00.000Z" interval="0.5" time="2026-01-01T00:00:00.000Z"/>')


def _report(target: Target, asm: str, uuid: str | None, rc: int = 7) -> str:
    attrs = f' uuid="{uuid}"' if uuid else ""
    return (f'<report deployable="{target.name}" assembly="{asm}" resource="s{asm[1:]}" '
            f'operation="monitor" interval="1000" rc="{rc}" time="2026-01-01T00:00:00.000Z"'
            f'{attrs} reason="impostor says it died"/>')


def _dropped(target: Target, before: int, text: str) -> None:
    wait_until(lambda: target.dpe_log()[before:].count(text), 15, f"DPE log line {text!r}")


@pytest.mark.parametrize("kind", ["heartbeat", "report"])
@pytest.mark.parametrize("body, opcode, logged", [
    *[(b, None, "dropped an invalid") for _, b in GARBAGE],
    ("<event type='config_error' deployable='x'/>", None, "dropped an invalid"),
    ("<{kind} deployable='{dep}' assembly='a1' seq='many'/>", None, "dropped an invalid"),
    ("{valid}", "event", "dropped a message with opcode 'event'"),
    ("{valid}", "", "dropped a message with opcode ''"),
], ids=[*(i for i, _ in GARBAGE), "wrong-root", "schema-invalid", "wrong-opcode",
        "empty-opcode"])
def test_agent_topic_garbage_is_dropped(target: Target, kind: str, body: object,
                                        opcode: str | None, logged: str) -> None:
    """The DPE drops each with one log line; the opcode-less ones get their kind's opcode."""
    valid = (_beat if kind == "heartbeat" else _report)(target, "a1", target.uuids["a1"])
    if isinstance(body, str):
        body = body.format(kind=kind, dep=target.name, valid=valid)
    before = len(target.dpe_log())
    target.send(f"/topic/pcloud.{kind}.{target.name}.a1", body, kind,
                kind if opcode is None else opcode, reply_to=False)
    _dropped(target, before, logged)


@pytest.mark.parametrize("kind, asm", [("heartbeat", "a2"), ("report", "a3")])
def test_agent_messages_from_another_login_are_dropped(target: Target, kind: str,
                                                       asm: str) -> None:
    """Beats, or a report claiming the service died, from a login other than the assembly's
    current agent login change nothing (``untouched`` checks), even with the assembly's own
    uuid: the uuid is no secret, the broker-checked user_id is the proof. One log line per
    sender."""
    make = _beat if kind == "heartbeat" else _report
    sender = target.client.user_id.decode()
    before = len(target.dpe_log())
    for claimed in (target.uuids[asm], None, target.uuids[asm]):
        target.send(f"/topic/pcloud.{kind}.{target.name}.{asm}", make(target, asm, claimed),
                    kind, kind, reply_to=False)
    _dropped(target, before, f"dropped a {kind} of assembly {asm} from {sender!r}")
    target.send(f"/topic/pcloud.{kind}.{target.name}.{asm}", "not xml", kind, kind,
                reply_to=False)
    _dropped(target, before, "dropped an invalid")     # all three handled, in order
    assert target.dpe_log()[before:].count(f"of assembly {asm} from {sender!r}") == 1


def test_cpe_topic_garbage_is_dropped(target: Target) -> None:
    """Garbage events and DPE heartbeats: the CPE stores nothing, the DPE ignores them."""
    for body in ("not xml", BOMB, BINARY,
                 f"<event seq='x' deployable='{target.name}' type='deployable_state_change'/>"):
        target.send(f"/topic/pcloud.event.{target.name}.-.-", body, "event", "event",
                    reply_to=False)
        target.send(f"/topic/pcloud.heartbeat.{target.name}.-", body, "heartbeat", "heartbeat",
                    reply_to=False)
    for line in ("dropped an invalid event", "dropped an invalid DPE heartbeat"):
        wait_until(lambda text=line: target.cped.log.read_text(errors="replace").count(text)
                   >= 4, 15, f"the CPE log to say {line!r} for each")
    assert target.client.listing()[target.name] == "running"

