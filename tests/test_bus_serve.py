"""Bus.serve against a real broker: handler pools, per-key order, calls into the own Bus,
and repeated requests answered with fresh messages."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest
from proton import Message as ProtonMessage
from proton.handlers import MessagingHandler
from proton.reactor import Container
from support.bus import serve, unique

from pcloud import protocol
from pcloud.bus import Bus, Message

GATE = 20.0  # generous deadline for events a test waits on


@pytest.fixture
def server(broker):
    with Bus(broker.url, name="test-serve") as srv:
        yield srv


def in_background(fn: Callable[[], object]) -> tuple[threading.Thread, list[object]]:
    """Run ``fn`` on a thread; its result (or exception) lands in the returned list."""
    out: list[object] = []

    def run() -> None:
        try:
            out.append(fn())
        except Exception as exc:
            out.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, out


class Slow:
    """A handler that blocks until the test lets it go."""

    def __init__(self) -> None:
        self.gate, self.entered = threading.Event(), threading.Event()

    def __call__(self, body, msg) -> str:
        self.entered.set()
        assert self.gate.wait(GATE), "the test never opened the gate"
        return "<slow/>"

    @contextmanager
    def busy(self, client: Bus, queue: str) -> Iterator[list[object]]:
        """Keep one ``slow`` call running on ``queue`` for the body of the with block."""
        thread, out = in_background(lambda: client.call(queue, "slow", "<x/>", timeout=GATE))
        try:
            assert self.entered.wait(GATE)
            yield out
        finally:
            self.gate.set()
            thread.join(GATE)


def test_slow_handler_does_not_hold_up_another_queue(server, bus):
    slow = Slow()
    queue = serve(server, {"slow": slow})
    fast = serve(server, {"fast": lambda body, msg: "<fast/>"})
    with slow.busy(bus, queue) as out:
        assert bus.call(fast, "fast", "<x/>").tag == "fast"
        assert out == []
    assert out[0].tag == "slow"


def test_slow_handler_does_not_hold_up_subscriptions(server, bus, wait_until):
    slow = Slow()
    queue = serve(server, {"slow": slow})
    key = unique("pcloud.test.events")
    got: list[Message] = []
    assert server.subscribe(key, got.append).wait_attached()
    with slow.busy(bus, queue):
        bus.publish(key, Message(body="<e/>", subject="ping"))
        wait_until(lambda: got, what="the event while a handler is busy")


def test_workers_run_methods_of_one_queue_concurrently(server, bus):
    slow = Slow()
    queue = serve(server, {"slow": slow, "fast": lambda body, msg: "<fast/>"}, workers=2)
    with slow.busy(bus, queue) as out:
        assert bus.call(queue, "fast", "<x/>").tag == "fast"
        assert out == []


def test_handler_calls_methods_served_by_its_own_bus(server, bus):
    inner = serve(server, {"inner": lambda body, msg: "<inner/>"})
    outer = serve(server, {
        "outer": lambda body, msg: server.call(inner, "inner", "<x/>", timeout=GATE),
        "again": lambda body, msg: server.call(msg.address, "leaf", "<x/>", timeout=GATE),
        "leaf": lambda body, msg: "<leaf/>"}, workers=2)
    assert bus.call(outer, "outer", "<x/>").tag == "inner"
    assert bus.call(outer, "again", "<x/>").tag == "leaf"


def test_subscription_callback_calls_a_method_of_its_own_bus(server, bus, wait_until):
    queue = serve(server, {"echo": lambda body, msg: body})
    key = unique("pcloud.test.events")
    answers: list[str] = []
    sub = server.subscribe(
        key, lambda msg: answers.append(server.call(queue, "echo", msg.body, timeout=GATE).tag))
    assert sub.wait_attached()
    bus.publish(key, Message(body="<hello/>"))
    wait_until(lambda: answers == ["hello"], what="the callback's call to be answered")


def request(queue_reply: str, method: str, body: str, message_id: str | None = None) -> Message:
    msg = Message(body=body, subject=method, opcode="method_request", reply_to=queue_reply,
                  correlation_id=str(uuid.uuid4()))
    if message_id:
        msg.id = message_id
    return msg


def test_one_worker_keeps_arrival_order(server, bus, wait_until):
    order: list[str] = []
    queue = serve(server, {"note": lambda body, msg: order.append(body.get("n")) or None})
    replies: list[Message] = []
    reply_queue = unique("pcloud.test.replies")
    assert bus.consume(reply_queue, replies.append).wait_attached()
    sent = [str(n) for n in range(30)]
    for n in sent:
        bus.send(queue, request(reply_queue, "note", f"<x n='{n}'/>"))
    wait_until(lambda: len(replies) == len(sent), what="every answer")
    assert order == sent


def test_serial_key_orders_one_key_and_overlaps_others(server, bus, wait_until):
    lock = threading.Lock()
    running: dict[str, int] = {}
    overlaps: list[str] = []
    done: dict[str, list[str]] = {"a": [], "b": []}
    b_done = threading.Event()

    def op(body, msg):
        key, n = body.get("key"), body.get("n")
        with lock:
            running[key] = running.get(key, 0) + 1
            if running[key] > 1:
                overlaps.append(key)
        if key == "a" and n == "0":
            # a's first operation waits for b's, which proves different keys overlap
            assert b_done.wait(GATE), "key b never ran while key a was busy"
        with lock:
            running[key] -= 1
            done[key].append(n)
        if key == "b":
            b_done.set()
        return None

    queue = serve(server, {"op": op}, workers=3,
                  serial_key=lambda method, body, msg: body.get("key"))
    replies: list[Message] = []
    reply_queue = unique("pcloud.test.replies")
    assert bus.consume(reply_queue, replies.append).wait_attached()
    for n in range(5):
        bus.send(queue, request(reply_queue, "op", f"<op key='a' n='{n}'/>"))
    bus.send(queue, request(reply_queue, "op", "<op key='b' n='0'/>"))
    wait_until(lambda: len(replies) == 6, what="all six answers")
    assert overlaps == []
    assert done == {"a": ["0", "1", "2", "3", "4"], "b": ["0"]}


class RawRequester(MessagingHandler):
    """A foreign client: sends prepared proton messages on one link, then disconnects."""

    def __init__(self, url: str, address: str, messages: list[ProtonMessage]) -> None:
        super().__init__()
        self.url, self.address, self.messages = url, address, messages
        self.settled = 0

    def on_start(self, event) -> None:
        conn = event.container.connect(self.url, allowed_mechs="PLAIN")
        event.container.create_sender(conn, self.address)

    def on_sendable(self, event) -> None:
        while event.sender.credit and self.messages:
            event.sender.send(self.messages.pop(0))

    def on_settled(self, event) -> None:
        self.settled += 1
        if not self.messages:
            event.connection.close()


def test_repeated_request_gets_a_fresh_answer_from_cache(server, bus, broker, wait_until):
    runs: list[int] = []
    queue = serve(server, {"count": lambda body, msg: runs.append(1) or f"<n v='{len(runs)}'/>"})
    reply_queue = unique("pcloud.test.replies")
    replies: list[Message] = []
    assert bus.consume(reply_queue, replies.append).wait_attached()
    same = dict(body="<x/>", id="request-1", subject="count", reply_to=reply_queue,
                correlation_id="c1", properties={"pcloud.opcode": "method_request"},
                user_id=bus.user.encode())
    first = RawRequester(broker.url, queue, [ProtonMessage(**same)])
    Container(first).run()
    wait_until(lambda: len(replies) == 1, what="the first answer")
    again = RawRequester(broker.url, queue, [ProtonMessage(**same)])
    Container(again).run()
    wait_until(lambda: len(replies) == 2, what="the answer to the repeat")
    assert len(runs) == 1
    assert replies[0].id != replies[1].id
    assert [r.correlation_id for r in replies] == ["c1", "c1"]
    assert [protocol.parse_response(r.body).get("v") for r in replies] == ["1", "1"]
