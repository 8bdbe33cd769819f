"""pcloud.bus against a real broker: calls, errors, events, duplicates, threads, credentials."""

from __future__ import annotations

import threading
import time
from urllib.parse import urlsplit, urlunsplit

import pytest
from support.bus import serve, unique

from pcloud import protocol
from pcloud.broker import free_port
from pcloud.bus import (
    Backoff,
    Bus,
    BusAuthError,
    BusError,
    BusTimeout,
    BusUnreachable,
    Message,
    MethodError,
    connect,
)


@pytest.fixture
def server(broker):
    srv = Bus(broker.url, name="test-server").start(timeout=30)
    yield srv
    srv.close()


def test_call_round_trip(server, bus):
    queue = serve(server, {"echo": lambda body, msg: body,
                           "nothing": lambda body, msg: None})
    result = bus.call(queue, "echo", '<deployable name="dep1"/>')
    assert result.tag == "deployable" and result.get("name") == "dep1"
    assert bus.call(queue, "nothing", "<x/>") is None


def test_handler_sees_the_envelope(server, bus):
    seen = []
    queue = serve(server, {"look": lambda body, msg: seen.append(msg) or "<ok/>"})
    bus.call(queue, "look", "<x/>", properties={"pcloud.agent": "a1"})
    msg = seen[0]
    assert msg.subject == "look" and msg.opcode == "method_request"
    assert msg.reply_to.startswith("pcloud.reply.") and msg.correlation_id and msg.id
    assert msg.properties == {"pcloud.agent": "a1"}


def test_call_without_server_times_out(bus):
    with pytest.raises(BusTimeout, match=r"no response to 'ping' from queue 'pcloud\.nobody"):
        bus.call(unique("pcloud.nobody"), "ping", "<ping/>", timeout=0.5)


def test_malformed_body_gets_an_error_response_with_its_line(server, bus):
    queue = serve(server, {"echo": lambda body, msg: body})
    with pytest.raises(MethodError) as info:
        bus.call(queue, "echo", "<a>\n<b>\n</a>")
    assert info.value.code == "malformed_xml" and "line 3" in info.value.message
    with pytest.raises(MethodError) as info:
        bus.call(queue, "echo", '<!DOCTYPE a [<!ENTITY x "y">]><a>&x;</a>')
    assert info.value.code == "malformed_xml"


def test_unknown_method_gets_an_error_response(server, bus):
    queue = serve(server, {"echo": lambda body, msg: body})
    with pytest.raises(MethodError) as info:
        bus.call(queue, "no_such_method", "<x/>")
    assert info.value.code == "unknown_method" and "echo" in info.value.message


def test_method_error_and_crash_become_error_responses(server, bus):
    def refuse(body, msg):
        raise MethodError("not_found", "deployable dep9 does not exist", 2)

    def crash(body, msg):
        raise ZeroDivisionError("division by zero")

    queue = serve(server, {"refuse": refuse, "crash": crash, "echo": lambda b, m: b})
    with pytest.raises(MethodError) as info:
        bus.call(queue, "refuse", "<x/>")
    assert (info.value.code, info.value.rc) == ("not_found", 2)
    with pytest.raises(MethodError) as info:
        bus.call(queue, "crash", "<x/>")
    assert info.value.code == "internal_error" and "ZeroDivisionError" in info.value.message
    assert bus.call(queue, "echo", "<still_serving/>").tag == "still_serving"


def test_events_fan_out_to_wildcard_subscribers(server, bus, wait_until):
    dep = unique("dep").replace(".", "")
    star, hash_ = [], []
    subs = [bus.subscribe(f"pcloud.event.{dep}.*.*", star.append),
            bus.subscribe(f"pcloud.event.{dep}.#", hash_.append)]
    assert all(sub.wait_attached() for sub in subs)
    server.publish(f"pcloud.event.{dep}.web.httpd",
                   Message(body='<event type="resource_state_change"/>',
                           subject="resource_state_change", opcode="event"))
    server.publish(f"pcloud.event.{dep}.-", Message(body="<event/>", subject="other"))
    wait_until(lambda: len(star) == 1 and len(hash_) == 2, what="events on both")
    assert star[0].subject == "resource_state_change" and star[0].opcode == "event"
    assert star[0].address == f"/topic/pcloud.event.{dep}.*.*"
    assert {m.subject for m in hash_} == {"resource_state_change", "other"}


def test_subscriber_drops_duplicate_ids(server, bus, wait_until):
    key = unique("pcloud.test.dups")
    got = []
    assert bus.subscribe(key, got.append).wait_attached()
    once = Message(body="<e/>", subject="once")
    server.publish(key, once)
    server.publish(key, once)
    server.publish(key, Message(body="<e/>", subject="marker"))
    wait_until(lambda: any(m.subject == "marker" for m in got), what="marker")
    assert [m.subject for m in got] == ["once", "marker"]


def test_messages_published_just_before_close_are_sent(broker, bus, wait_until):
    key = unique("pcloud.test.last")
    got = []
    assert bus.subscribe(key, got.append).wait_attached()
    for n in range(3):
        publisher = Bus(broker.url, name="test-last-words").start(timeout=30)
        publisher.publish(key, Message(body=f"<first n='{n}'/>"))
        publisher.publish(key, Message(body=f"<last n='{n}'/>"))
        publisher.close()
    wait_until(lambda: len(got) == 6, what="every message published just before close")


def test_repeated_request_is_answered_from_cache_not_rerun(server, bus, wait_until):
    runs = []
    queue = serve(server, {"count": lambda body, msg: runs.append(1) or f"<n v='{len(runs)}'/>"})
    reply_queue = unique("pcloud.test.replies")
    request = Message(body="<x/>", subject="count", opcode="method_request",
                      reply_to=reply_queue, correlation_id="c1")
    replies = []
    # one consumer for both: it drops ids it has seen, so each answer must be a new message
    assert bus.consume(reply_queue, replies.append).wait_attached()
    for attempt in (1, 2):
        bus.send(queue, request)
        wait_until(lambda n=attempt: len(replies) == n, what=f"response {attempt}")
    assert len(runs) == 1
    assert [protocol.parse_response(r.body).get("v") for r in replies] == ["1", "1"]
    assert all(r.correlation_id == "c1" and r.opcode == "method_response" for r in replies)
    assert replies[0].id != replies[1].id


def test_handlers_may_call_other_methods(server, broker):
    helper = Bus(broker.url, name="test-helper").start(timeout=30)
    try:
        inner = serve(helper, {"inner": lambda body, msg: "<inner/>"})
        outer = serve(server, {"outer": lambda body, msg: server.call(inner, "inner", "<x/>")})
        assert helper.call(outer, "outer", "<x/>").tag == "inner"
    finally:
        helper.close()


def test_calls_from_many_threads(server, bus):
    queue = serve(server, {"echo": lambda body, msg: body})
    results: dict[int, str] = {}

    def worker(n: int) -> None:
        for i in range(20):
            results[n * 100 + i] = bus.call(queue, "echo", f"<n v='{n * 100 + i}'/>").get("v")

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert len(results) == 160 and all(str(k) == v for k, v in results.items())


def test_wrong_password_is_refused(broker):
    parts = urlsplit(broker.url)
    if not parts.password:
        pytest.skip("the broker URL carries no password to get wrong")
    netloc = f"{parts.username}:wrong-{parts.password}@{parts.hostname}:{parts.port}"
    bad = Bus(urlunsplit(parts._replace(netloc=netloc)), name="test-bad-password")
    with pytest.raises(BusAuthError, match="refused the credentials"):
        bad.start(timeout=30)
    started = time.monotonic()          # waiting cannot help a refused login: raised at once
    with pytest.raises(BusAuthError):
        connect(lambda: Bus(urlunsplit(parts._replace(netloc=netloc)), name="test-bad"),
                attempt=30)
    assert time.monotonic() - started < 30


def test_no_broker_listening_is_a_bus_error():
    with pytest.raises(BusUnreachable, match="cannot connect"):
        Bus(f"amqp://u:p@127.0.0.1:{free_port()}", name="test-nobody").start(timeout=1)


def test_connect_waits_for_an_unreachable_broker_until_asked_to_stop():
    stop, attempts, waited = threading.Event(), [], []

    class Recorded(Backoff):
        def delays(self):
            for delay in super().delays():
                waited.append(delay)
                yield delay

    def make() -> Bus:
        attempts.append(len(waited))
        if len(attempts) == 3:
            stop.set()
        return Bus(f"amqp://u:p@127.0.0.1:{free_port()}", name="test-nobody")

    assert connect(make, stop, attempt=0.2, backoff=Recorded(first=0.1, cap=0.4)) is None
    assert attempts == [0, 1, 2] and waited == [0.1, 0.2, 0.4]     # backing off, then stopped


def test_connect_returns_the_started_bus_once_the_broker_answers(broker):
    bus = connect(lambda: Bus(broker.url, name="test-connect"), attempt=30)
    try:
        assert bus is not None and bus.connected
    finally:
        bus.close()


def test_close_leaves_no_thread(broker):
    before = set(threading.enumerate())
    client = Bus(broker.url, name="test-close").start(timeout=30)
    client.subscribe("pcloud.test.close.#", lambda m: None)
    client.close()
    assert [t for t in threading.enumerate() if t not in before and t.is_alive()] == []
    with pytest.raises(BusError, match="closed"):
        client.publish("pcloud.test.close.x", Message(body="<e/>"))


def test_use_before_start_is_an_error(broker):
    with pytest.raises(BusError, match="not started"):
        Bus(broker.url).send("pcloud.test", Message(body="<x/>"))


def senders_of(bus: Bus) -> list[str]:
    """The addresses the bus's event loop holds sender links for (read on its thread)."""
    loop = bus._loop
    return loop.submit(lambda: list(loop._senders)).result(5)


@pytest.mark.parametrize("reply_to", ["/temp-queue/x", "queue://x", "amq.gen-x"])
def test_request_with_unusable_reply_to_is_dropped(server, bus, wait_until, caplog, reply_to):
    runs = []
    queue = serve(server, {"echo": lambda body, msg: runs.append(1) or "<ok/>"})
    request = Message(body="<x/>", subject="echo", opcode="method_request",
                      reply_to=reply_to, correlation_id="c1")
    with caplog.at_level("DEBUG", logger="pcloud.bus"):
        bus.send(queue, request)
        bus.send(queue, request)
        wait_until(lambda: sum(reply_to in r.getMessage() for r in caplog.records) == 2,
                   what="both requests refused")
    warned = [r for r in caplog.records if reply_to in r.getMessage() and r.levelname == "WARNING"]
    assert len(warned) == 1, "each refused address is logged once"
    assert reply_to not in senders_of(server)
    assert runs == []
    assert bus.call(queue, "echo", "<x/>").tag == "ok"
    assert runs == [1]
    assert reply_to not in senders_of(server)


def test_sender_refused_by_the_broker_is_given_up(bus, server, wait_until, caplog):
    # RabbitMQ 3.10 drops the whole connection on this address: one attempt per reconnect
    queue = serve(server, {"echo": lambda body, msg: "<ok/>"})
    loop = bus._loop
    with caplog.at_level("INFO", logger="pcloud.bus"):
        for n in range(3):
            loop.post("/temp-queue/x", Message(body=f"<lost n='{n}'/>"))
        wait_until(lambda: "/temp-queue/x" not in senders_of(bus), timeout=60,
                   what="the refused sender is evicted")
    gave_up = [r.getMessage() for r in caplog.records if "giving up" in r.getMessage()]
    assert len(gave_up) == 1 and "'/temp-queue/x'" in gave_up[0]
    assert "dropped 3 message(s)" in gave_up[0]
    assert bus.call(queue, "echo", "<x/>").tag == "ok"
    time.sleep(0.5)  # no relink is still scheduled for it
    assert "/temp-queue/x" not in senders_of(bus)
