"""The agent's request server on a real broker: one resource's operations in arrival order,
other resources concurrently (a slow start never delays another resource's probe)."""

from __future__ import annotations

import threading
import uuid

from lxml import etree

from guest_agent.server import AgentServer, resource_key
from pcloud.bus import Message

GATE = 20.0


def op(operation: str, name: str) -> str:
    return (f'<resource_op operation="{operation}" interval="0">'
            f'<resource name="{name}" class="process"/></resource_op>')


def test_resource_key_names_the_resource_of_an_operation():
    msg = Message(body="")
    assert resource_key("resource_start", etree.fromstring(op("start", "web")), msg) == "web"
    assert resource_key("resource_status", etree.fromstring("<resources/>"), msg) is None
    assert resource_key("resource_start", etree.fromstring("<resource_op/>"), msg) is None


def test_operations_serialised_per_resource_concurrent_across(bus, wait_until):
    queue = f"pcloud.agent.test{uuid.uuid4().hex[:8]}.a1"
    other_ran = threading.Event()
    order: list[str] = []

    def handler(method: str, body: etree._Element) -> etree._Element:
        name = body.find("resource").get("name")
        if (name, method) == ("a", "resource_start"):
            assert other_ran.wait(GATE), "resource b waited for resource a"
        order.append(f"{name}:{method}")
        if name == "b":
            other_ran.set()
        return etree.Element("op_result", resource=name)

    server = AgentServer(bus, queue, handler)
    served = server.start()
    try:
        reply_queue = f"pcloud.reply.{uuid.uuid4()}"
        replies: list[Message] = []
        assert bus.consume(reply_queue, replies.append).wait_attached()
        assert served.wait_attached()
        for method, name in (("resource_start", "a"), ("resource_stop", "a"),
                             ("resource_monitor", "b")):
            bus.send(queue, Message(body=op(method.removeprefix("resource_"), name),
                                    subject=method, opcode="method_request",
                                    reply_to=reply_queue, correlation_id=str(uuid.uuid4())))
        wait_until(lambda: len(replies) == 3, what="three answers")
        assert order == ["b:resource_monitor", "a:resource_start", "a:resource_stop"]
    finally:
        server.close()
