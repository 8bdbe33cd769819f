"""What the web console adds to an event's way to the people on call.

A private broker, a ``cped`` with ``[web] listen`` and one ``process`` deployable; its
resources are SIGKILLed in turn. Every event is timed where it arrives twice in the same
run: at a plain bus subscriber (the peer: what pcloudsh or any AMQP client sees) and on the
console's Server-Sent Events stream (what the browser gets: the console's own observer
connection, its fold, aiohttp). Printed: kill → ``running`` event at each, and the console's
lag behind the peer per event (median, p99, and the ratio of the medians).

Run: ``.venv/bin/python bench/console.py [--kills N]``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from contextlib import suppress
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pcloud import broker, xmlsafe  # noqa: E402
from pcloud.bus import Bus, BusError  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mttr import RESOURCES, document, figures, pgrep  # noqa: E402  (the same deployable)

BIN = Path(sys.executable).parent


class Arrivals:
    """(deployable, seq) -> arrival time, with a wait for a matching event."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.times: dict[tuple[str, str], float] = {}
        self.events: list[tuple[float, dict[str, str]]] = []

    def add(self, event: dict[str, str]) -> None:
        arrived = time.time()
        with self.cond:
            key = (event.get("deployable", ""), event.get("seq", ""))
            if key not in self.times:
                self.times[key] = arrived
                self.events.append((arrived, event))
                self.cond.notify_all()

    def wait(self, after: float, timeout: float = 60.0, **match: str) -> tuple[float, dict]:
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for arrived, event in self.events:
                    if arrived >= after and all(event.get(k) == v for k, v in match.items()):
                        return arrived, event
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no event {match} within {timeout} s")
                self.cond.wait(left)


def read_stream(port: int, into: Arrivals, stop: threading.Event) -> None:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/stream", timeout=60) as stream:
        for line in stream:
            if stop.is_set():
                return
            if line.startswith(b"data: "):
                message = json.loads(line[6:])
                if message.get("kind") == "event":
                    into.add(message["event"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kills", type=int, default=30)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="pcloud-bench-console-"))
    broker_dir, state = work / "broker", work / "state"
    ports = broker.free_port(), broker.free_port(), broker.free_port()
    web_port = broker.free_port()
    url = broker.start(broker_dir, port=ports[0], dist_port=ports[1], epmd_port=ports[2])
    (work / "pcloud.conf").write_text(f"[web]\nlisten = 127.0.0.1:{web_port}\n")
    env = dict(os.environ, PCLOUD_BROKER_URL=url, PCLOUD_STATE_DIR=str(state),
               PCLOUD_BROKER_ADMIN=str(broker_dir), PCLOUD_CONFIG=str(work / "pcloud.conf"))
    state.mkdir()
    with open(work / "cped.log", "ab") as log:
        cped = subprocess.Popen([str(BIN / "cped"), "--foreground", "--state-dir", str(state)],
                                stdout=log, stderr=log, env=env, stdin=subprocess.DEVNULL)
    client = Bus(url=url, name="bench-console").start(timeout=30)
    peer, console = Arrivals(), Arrivals()
    stop = threading.Event()
    name, tag = "bench", f"{os.getpid() % 1000:03d}71"
    try:
        client.subscribe("pcloud.event.#", lambda m: peer.add(
            dict(xmlsafe.parse(m.body, source="event").attrib))).wait_attached(10)
        deadline = time.monotonic() + 60
        while True:
            try:
                client.call("pcloud.cpe", "deployables_list", "<deployables/>", timeout=5)
                break
            except BusError:
                if time.monotonic() > deadline or cped.poll() is not None:
                    raise RuntimeError(f"cped does not answer; see {work / 'cped.log'}") from None
        reader = threading.Thread(target=read_stream, args=(web_port, console, stop),
                                  daemon=True)
        reader.start()
        started = time.time()
        client.call("pcloud.cpe", "deployable_start", document(name, tag), timeout=15)
        peer.wait(started, 180, type="deployable_state_change", state="running")
        console.wait(started, 60, type="deployable_state_change", state="running")
        at_peer, at_console = [], []
        for k in range(args.kills):
            rsc = f"r{k % RESOURCES}"
            pids = pgrep(f"sleep {tag}{k % RESOURCES:02d}")
            if len(pids) != 1:
                raise RuntimeError(f"expected one process for {rsc}, found {pids}")
            time.sleep(0.5)
            killed = time.time()
            os.kill(pids[0], signal.SIGKILL)
            seen, _ = peer.wait(killed, resource=rsc, state="running")
            shown, _ = console.wait(killed, resource=rsc, state="running")
            at_peer.append(seen - killed)
            at_console.append(shown - killed)
        both = [key for key in peer.times if key in console.times]
        lag = [console.times[key] - peer.times[key] for key in both]
        print(figures("SIGKILL -> running event, bus subscriber", at_peer))
        print(figures("SIGKILL -> running event, console (SSE)", at_console))
        print(figures("console behind the bus subscriber, per event", lag))
        print(f"ratio of medians, console / bus subscriber: "
              f"{statistics.median(at_console) / statistics.median(at_peer):.2f}")
        return 0
    finally:
        stop.set()
        with suppress(BusError):
            client.call("pcloud.cpe", "deployable_stop", f'<deployable name="{name}"/>',
                        timeout=15)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                listing = client.call("pcloud.cpe", "deployables_list", "<deployables/>")
                if all(d.get("state") == "stopped" for d in listing):
                    break
                time.sleep(0.3)
        cped.terminate()
        try:
            cped.wait(20)
        except subprocess.TimeoutExpired:
            cped.kill()
        client.close()
        broker.stop(broker_dir)


if __name__ == "__main__":
    sys.exit(main())
