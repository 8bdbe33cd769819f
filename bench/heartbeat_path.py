"""DPE CPU per heartbeat in the handler alone (no broker), at N watched assemblies.

Runs the DPE's own heartbeat code (``Detection._on_heartbeat`` and whatever it queues for the
main loop) on real heartbeat messages of N assemblies of one deployable, one beat of each
per round (and the main loop's heartbeat check once a round), and prints the CPU time per
beat (median and p99 over rounds). It isolates what the DPE does per beat from the proton
receive path and the broker, which ``bench/scale.py`` measures with a real dped:

    .venv/bin/python bench/heartbeat_path.py [--assemblies 1000] [--rounds 20]
"""

from __future__ import annotations

import argparse
import queue
import statistics
import sys
import time
from concurrent.futures import Future
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dpe_agent.detection import Detection  # noqa: E402
from dpe_agent.heartbeats import HeartbeatTracker  # noqa: E402
from dpe_agent.observed import ObservedState  # noqa: E402
from pcloud.bus import Message  # noqa: E402
from pcloud.bus.dedup import RecentIds  # noqa: E402
from pcloud.deployable import Deployable  # noqa: E402
from pcloud.wire.heartbeat import Heartbeat  # noqa: E402

STARTED = "2026-12-07T10:00:00.000Z"


class _Logins:
    def expected(self, assembly: str) -> str:
        return f"agent-{assembly}"


class _Bus:
    connected = True
    user = "dpe-dep"

    def lag_probe(self) -> Future:
        """No bus thread here: the probe is through at once (no lag)."""
        probe: Future = Future()
        probe.set_result(time.monotonic())
        return probe


class _Driver:
    def boot_progress(self, spec: object) -> int | None:
        """No machine shows signs of life (every assembly here beats from round one)."""
        return None


class Handler(Detection):
    """Just what the heartbeat path reads; a first beat only marks the assembly online."""

    def __init__(self, dep: Deployable) -> None:
        self.dep, self.name = dep, dep.name
        self.queue: queue.SimpleQueue = queue.SimpleQueue()
        self.tracker = HeartbeatTracker()
        self.observed = ObservedState()
        self.logins, self.bus, self.driver = _Logins(), _Bus(), _Driver()
        self.stopping = False
        self.reprobe_on_beat: set[str] = set()
        self.wrong_logins = RecentIds(4096)
        self.impostor_events: dict[str, float] = {}
        self.online: set[str] = set()
        self.addresses: dict[str, tuple[str, ...]] = {}

    def _assembly_online(self, asm: str) -> None:
        self.online.add(asm)

    def _admit_boots(self) -> None:
        """Nothing boots here."""

    def drain(self) -> None:
        while True:
            try:
                kind, *args = self.queue.get_nowait()
            except queue.Empty:
                return
            getattr(self, f"_handle_{kind}")(*args)


def deployable(n: int) -> Deployable:
    asms = "".join(f'<assembly name="a{i}" uuid="u-{i}" heartbeat_interval="1" '
                   f'heartbeat_misses="3"><services/></assembly>' for i in range(n))
    return Deployable.from_xml(f'<deployable name="dep" uuid="d-1"><assemblies>{asms}'
                               f'</assemblies></deployable>')


def beat(i: int, seq: int) -> Message:
    elem = Heartbeat(deployable="dep", seq=seq, started=STARTED, interval=1.0,
                     time="2026-12-07T10:00:01.000Z", assembly=f"a{i}", uuid=f"u-{i}",
                     digest="0123456789abcdef0123456789abcdef", pid=42).to_xml()
    msg = Message(body=elem, subject="heartbeat", opcode="heartbeat",
                  address=f"/topic/pcloud.heartbeat.dep.a{i}")
    msg.user_id = f"agent-a{i}"
    return msg


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--assemblies", type=int, default=1000)
    p.add_argument("--rounds", type=int, default=20)
    args = p.parse_args()
    n = args.assemblies
    handler = Handler(deployable(n))
    now = time.monotonic()
    for i in range(n):
        handler.tracker.expect(f"a{i}", 1.0, 3, now, boot_timeout=3600)
    per_beat = []
    for seq in range(1, args.rounds + 2):
        msgs = [beat(i, seq) for i in range(n)]
        start = time.process_time()
        for msg in msgs:
            handler._on_heartbeat(msg)
            handler.drain()
        handler._check_heartbeats(time.monotonic())       # the main loop's timer, once a round
        handler.tracker.next_deadline(time.monotonic())
        spent = time.process_time() - start
        if seq > 1:                       # the first round is every assembly's first beat
            per_beat.append(spent / n)
    per_beat.sort()
    p99 = per_beat[min(len(per_beat) - 1, int(len(per_beat) * 0.99))]
    print(f"N={n} rounds={args.rounds}: CPU per heartbeat median "
          f"{statistics.median(per_beat) * 1e3:.3f} ms, p99 {p99 * 1e3:.3f} ms "
          f"(online {len(handler.online)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
