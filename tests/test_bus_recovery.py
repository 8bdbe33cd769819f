"""The bus survives broker loss: SIGKILL + restart and a clean restart, mid-traffic.

A client keeps calling while the broker goes away and comes back. Every call must succeed
(the deadline outlasts the outage), the server must never run a request twice, and
subscriptions, publishing and on_reconnect must work afterwards.
"""

from __future__ import annotations

import collections
import itertools
import threading
import time
import uuid

import pytest

from pcloud.bus import Bus, BusError, Message
from pcloud.bus.recovery import RECONNECT_CAP, ResettingBackoff


class Traffic:
    """A thread that calls ``work`` with increasing numbers until stopped."""

    def __init__(self, client: Bus, queue: str) -> None:
        self.client = client
        self.queue = queue
        self.done = 0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="traffic")

    def _run(self) -> None:
        n = 0
        while not self._stop.is_set():
            n += 1
            try:
                result = self.client.call(self.queue, "work", f"<job n='{n}'/>", timeout=60)
                if result.get("n") != str(n):
                    self.failures.append(f"call {n} got the answer of {result.get('n')}")
                self.done += 1
            except BusError as exc:
                self.failures.append(f"call {n}: {exc}")

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(90)


@pytest.fixture
def pair(broker):
    broker.require_control()
    server = Bus(broker.url, name="test-recovery-server").start(timeout=30)
    client = Bus(broker.url, name="test-recovery-client").start(timeout=30)
    yield server, client
    client.close()
    server.close()


@pytest.mark.parametrize("outage", ["kill9", "clean_restart"])
def test_calls_survive_broker_outage(broker, pair, wait_until, outage):
    server, client = pair
    queue = f"pcloud.test.recovery.{uuid.uuid4().hex[:8]}"
    handled: collections.Counter[str] = collections.Counter()

    def work(body, msg):
        handled[body.get("n")] += 1
        return body

    assert server.serve(queue, {"work": work}).wait_attached()
    events = []
    subscription = client.subscribe("pcloud.event.recovery.#", events.append)
    assert subscription.wait_attached()
    reconnected = threading.Event()
    client.on_reconnect(reconnected.set)

    with Traffic(client, queue) as traffic:
        wait_until(lambda: traffic.done >= 20, what="calls before the outage")
        if outage == "kill9":
            broker.kill9()
            broker.start()
        else:
            broker.restart()
        wait_until(reconnected.is_set, timeout=60, what="client reconnect")
        after = traffic.done
        wait_until(lambda: traffic.done >= after + 20, timeout=60,
                   what="calls after the outage")

    assert traffic.failures == []
    assert [n for n, count in handled.items() if count > 1] == []
    wait_until(subscription.attached, timeout=30, what="subscription re-attached")
    server.publish("pcloud.event.recovery.x.y", Message(body="<event/>", subject="after"))
    wait_until(lambda: [m.subject for m in events] == ["after"], timeout=30,
               what="event after the outage")


def test_backoff_is_capped_and_starts_over_for_each_outage():
    backoff = ResettingBackoff()
    first = list(itertools.islice(backoff, 8))
    assert first == [0.0, 0.1, 0.2, 0.4, RECONNECT_CAP, RECONNECT_CAP, RECONNECT_CAP,
                     RECONNECT_CAP]
    assert list(itertools.islice(backoff, 3)) == [0.0, 0.1, 0.2]


def test_reconnect_follows_the_broker_start(broker, pair, wait_until):
    """Once the restarted broker listens, a client that has been retrying for a while is
    back within the back-off cap (plus slack for a busy host), not a multi-second step."""
    _server, client = pair
    broker.kill9()
    time.sleep(4.0)              # long enough for the back-off to reach its cap
    broker.start()
    back = time.monotonic()
    wait_until(lambda: client.connected, timeout=30, what="client reconnect")
    assert time.monotonic() - back < RECONNECT_CAP + 1.0
