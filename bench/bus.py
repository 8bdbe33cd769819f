"""Bus benchmark: library overhead over raw proton, measured in the same run.

Prints the method-call round trip (median, p99) and event throughput (msgs/s) through
``pcloud.bus`` and through bare qpid-proton handlers on the same broker, with the ratio.
Event runs alternate raw and library ``--rounds`` times and report the median of each, as
single runs on a shared 2-core machine vary by ±15 %, and the CPU time this process spent
per event (publisher and subscriber both run here), which other load disturbs less.
Uses ``PCLOUD_BROKER_URL`` or starts a private broker in a temporary directory.

    .venv/bin/python bench/bus.py [--calls 1000] [--events 5000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import threading
import time
import uuid

from proton import Message as ProtonMessage
from proton.handlers import MessagingHandler
from proton.reactor import Container

from pcloud import broker
from pcloud.bus import Bus, Message

BODY = '<event seq="1" type="resource_state_change" deployable="dep1" assembly="web" ' \
       'resource="httpd" state="running" reason="benchmark"/>'


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]


# ---- through the library -------------------------------------------------------------

def lib_calls(url: str, count: int) -> list[float]:
    queue = f"pcloud.bench.{uuid.uuid4().hex[:8]}"
    with Bus(url, name="bench-server") as server, Bus(url, name="bench-client") as client:
        server.serve(queue, {"echo": lambda body, msg: body}).wait_attached()
        for _ in range(20):
            client.call(queue, "echo", BODY)
        times = []
        for _ in range(count):
            start = time.perf_counter()
            client.call(queue, "echo", BODY)
            times.append(time.perf_counter() - start)
    return times


def lib_events(url: str, count: int) -> float:
    key = f"pcloud.bench.{uuid.uuid4().hex[:8]}"
    done = threading.Event()
    received = [0]

    def on_event(msg: Message) -> None:
        received[0] += 1
        if received[0] == count:
            done.set()

    with Bus(url, name="bench-pub") as pub, Bus(url, name="bench-sub") as sub:
        sub.subscribe(key, on_event).wait_attached()
        start = time.perf_counter()
        for _ in range(count):
            pub.publish(key, Message(body=BODY, subject="resource_state_change",
                                     opcode="event"))
        if not done.wait(120):
            raise SystemExit(f"library: only {received[0]} of {count} events arrived")
        return count / (time.perf_counter() - start)


# ---- raw proton ----------------------------------------------------------------------

class RawEcho(MessagingHandler):
    """Answers every request on a queue to its reply_to, like a minimal server."""

    def __init__(self, url: str, queue: str, ready: threading.Event) -> None:
        super().__init__()
        self.url, self.queue, self.ready = url, queue, ready
        self.sender = None

    def on_start(self, event) -> None:
        conn = event.container.connect(self.url, allowed_mechs="PLAIN")
        event.container.create_receiver(conn, self.queue)
        self.conn = conn
        self.senders: dict[str, object] = {}

    def on_link_opened(self, event) -> None:
        if event.receiver:
            self.ready.set()

    def on_message(self, event) -> None:
        req = event.message
        sender = self.senders.get(req.reply_to)
        if sender is None:
            sender = event.container.create_sender(self.conn, req.reply_to)
            self.senders[req.reply_to] = sender
        sender.send(ProtonMessage(body=req.body, correlation_id=req.correlation_id,
                                  subject=req.subject))
        if req.subject == "stop":
            event.connection.close()


class RawCaller(MessagingHandler):
    """Sends one request, waits for its response, repeats; records each round trip."""

    def __init__(self, url: str, queue: str, count: int) -> None:
        super().__init__()
        self.url, self.queue, self.count = url, queue, count + 20
        self.reply = f"pcloud.reply.{uuid.uuid4()}"
        self.times: list[float] = []
        self.started = 0.0
        self.sent = 0

    def on_start(self, event) -> None:
        conn = event.container.connect(self.url, allowed_mechs="PLAIN")
        self.receiver = event.container.create_receiver(conn, self.reply)
        self.sender = event.container.create_sender(conn, self.queue)

    def on_sendable(self, event) -> None:
        if self.sent == 0 and self.receiver.state & self.receiver.REMOTE_ACTIVE:
            self._next()

    def on_link_opened(self, event) -> None:
        if self.sent == 0 and self.sender.credit:
            self._next()

    def _next(self) -> None:
        self.sent += 1
        self.started = time.perf_counter()
        subject = "stop" if self.sent > self.count else "echo"
        self.sender.send(ProtonMessage(body=BODY, id=str(uuid.uuid4()), subject=subject,
                                       reply_to=self.reply, correlation_id=str(self.sent)))

    def on_message(self, event) -> None:
        if event.message.subject == "stop":
            event.connection.close()
            return
        if self.sent > 20:
            self.times.append(time.perf_counter() - self.started)
        self._next()


def raw_calls(url: str, count: int) -> list[float]:
    queue = f"pcloud.bench.raw.{uuid.uuid4().hex[:8]}"
    ready = threading.Event()
    server = threading.Thread(target=Container(RawEcho(url, queue, ready)).run, daemon=True)
    server.start()
    ready.wait(30)
    caller = RawCaller(url, queue, count)
    Container(caller).run()
    server.join(30)
    return caller.times


class RawPublisher(MessagingHandler):
    def __init__(self, url: str, address: str, count: int) -> None:
        super().__init__()
        self.url, self.address, self.count, self.sent, self.confirmed = url, address, count, 0, 0

    def on_start(self, event) -> None:
        conn = event.container.connect(self.url, allowed_mechs="PLAIN")
        event.container.create_sender(conn, self.address)

    def on_sendable(self, event) -> None:
        while event.sender.credit and self.sent < self.count:
            self.sent += 1
            event.sender.send(ProtonMessage(body=BODY, id=str(uuid.uuid4()),
                                            subject="resource_state_change"))

    def on_settled(self, event) -> None:
        self.confirmed += 1
        if self.confirmed == self.count:
            event.connection.close()


class RawSubscriber(MessagingHandler):
    def __init__(self, url: str, address: str, count: int, ready: threading.Event) -> None:
        super().__init__()
        self.url, self.address, self.count, self.ready = url, address, count, ready
        self.received = 0
        self.finished = 0.0

    def on_start(self, event) -> None:
        conn = event.container.connect(self.url, allowed_mechs="PLAIN")
        event.container.create_receiver(conn, self.address)

    def on_link_opened(self, event) -> None:
        self.ready.set()

    def on_message(self, event) -> None:
        self.received += 1
        if self.received == self.count:
            self.finished = time.perf_counter()
            event.connection.close()


def raw_events(url: str, count: int) -> float:
    address = f"/topic/pcloud.bench.raw.{uuid.uuid4().hex[:8]}"
    ready = threading.Event()
    sub = RawSubscriber(url, address, count, ready)
    thread = threading.Thread(target=Container(sub).run, daemon=True)
    thread.start()
    ready.wait(30)
    start = time.perf_counter()
    Container(RawPublisher(url, address, count)).run()
    thread.join(120)
    if sub.received < count:
        raise SystemExit(f"raw: only {sub.received} of {count} events arrived")
    return count / (sub.finished - start)


# ---- report --------------------------------------------------------------------------

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--events", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    url = os.environ.get("PCLOUD_BROKER_URL")
    private = None
    if not url:
        private = tempfile.mkdtemp(prefix="pcloud-bench-")
        print("starting a private broker ...", flush=True)
        url = broker.start(private, port=broker.free_port())
    try:
        raw_rtt = raw_calls(url, args.calls)
        lib_rtt = lib_calls(url, args.calls)
        raw_rates: list[float] = []
        lib_rates: list[float] = []
        raw_cpu: list[float] = []
        lib_cpu: list[float] = []
        for _ in range(args.rounds):
            for run, rates, cpu in ((raw_events, raw_rates, raw_cpu),
                                    (lib_events, lib_rates, lib_cpu)):
                before = time.process_time()
                rates.append(run(url, args.events))
                cpu.append((time.process_time() - before) / args.events)
    finally:
        if private:
            broker.stop(private)
    ms = 1000.0
    print(f"method call round trip, {args.calls} calls (ms):")
    print(f"  raw proton   median {statistics.median(raw_rtt) * ms:6.2f}   "
          f"p99 {percentile(raw_rtt, 0.99) * ms:6.2f}")
    print(f"  pcloud.bus   median {statistics.median(lib_rtt) * ms:6.2f}   "
          f"p99 {percentile(lib_rtt, 0.99) * ms:6.2f}")
    print(f"  overhead     median x{statistics.median(lib_rtt) / statistics.median(raw_rtt):.2f}"
          f"   p99 x{percentile(lib_rtt, 0.99) / percentile(raw_rtt, 0.99):.2f}")
    raw_rate, lib_rate = statistics.median(raw_rates), statistics.median(lib_rates)
    print(f"event throughput, {args.events} events through a topic, median of {args.rounds} "
          "(msgs/s):")
    print(f"  raw proton   {raw_rate:8.0f}   runs {' '.join(f'{r:.0f}' for r in raw_rates)}")
    print(f"  pcloud.bus   {lib_rate:8.0f}   runs {' '.join(f'{r:.0f}' for r in lib_rates)}")
    print(f"  library/raw  {lib_rate / raw_rate:.2f}")
    raw_us, lib_us = statistics.median(raw_cpu) * 1e6, statistics.median(lib_cpu) * 1e6
    print(f"CPU of this process per event, median (µs): raw {raw_us:.0f}, pcloud.bus "
          f"{lib_us:.0f}, library/raw {lib_us / raw_us:.2f}")


if __name__ == "__main__":
    main()
