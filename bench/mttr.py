"""MTTR of the DPE with the process driver: how fast killed things run again.

1. A ``process`` resource killed with SIGKILL until it runs again (target: < 0.2 s median).
   Kills go round-robin over several resources, each left running longer than the flapping
   back-off's healthy uptime, so every kill is a first failure and is restarted at once.
   Two figures: kill → the "running" event received here (what an operator sees), and the
   DPE's own incident timing (failure seen → recovery done, ``duration_ms`` of the event).
2. A whole assembly (its sandbox) killed with SIGKILL: kill → loss detected (compared with the
   heartbeat timeout, interval × misses; target ≤ timeout + 0.1 s), detection → the restart
   begins, and kill → its resources run again.

Uses PCLOUD_BROKER_URL, or starts a private broker node of its own (pcloud.broker) and stops
it at the end. Run: ``.venv/bin/python bench/mttr.py [--kills N] [--assembly-kills N]``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dpe_agent.daemon import Dpe, run_in_thread  # noqa: E402
from dpe_agent.drivers.base import AssemblySpec  # noqa: E402
from dpe_agent.drivers.process import ProcessDriver  # noqa: E402
from pcloud.bus import Bus  # noqa: E402
from pcloud.deployable import Deployable  # noqa: E402
from pcloud.events import Event  # noqa: E402

RESOURCES = 10
HB_INTERVAL, HB_MISSES = 0.5, 3


class Watcher:
    """Receives the deployable's events; callers wait for a matching one."""

    def __init__(self, bus: Bus, name: str) -> None:
        self.cond = threading.Condition()
        self.events: list[tuple[float, Event]] = []
        self.sub = bus.subscribe(f"pcloud.event.{name}.#", self._on)
        self.sub.wait_attached(10)

    def _on(self, msg) -> None:
        arrived = time.time()
        with self.cond:
            self.events.append((arrived, Event.from_xml(msg.body)))
            self.cond.notify_all()

    def wait(self, after: float, timeout: float = 60.0, **match) -> tuple[float, Event]:
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for arrived, event in self.events:
                    if arrived >= after and all(
                            getattr(event, k, None) == v or event.extra.get(k) == v
                            for k, v in match.items()):
                        return arrived, event
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no event {match} within {timeout} s")
                self.cond.wait(left)


def pgrep(pattern: str) -> list[int]:
    out = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def document(name: str, tag: str) -> str:
    services = "".join(
        f'<service name="r{i}" class="process" monitor_interval="5"><parameters>'
        f'<parameter name="command" value="sleep {tag}{i:02d}"/></parameters></service>'
        for i in range(RESOURCES))
    return (f'<deployable name="{name}" infrastructure="process"><assemblies>'
            f'<assembly name="a" heartbeat_interval="{HB_INTERVAL}" heartbeat_misses='
            f'"{HB_MISSES}"><services>{services}</services></assembly>'
            f'<assembly name="b" heartbeat_interval="{HB_INTERVAL}" heartbeat_misses='
            f'"{HB_MISSES}"><services><service name="s" class="process"><parameters>'
            f'<parameter name="command" value="sleep {tag}99"/></parameters></service>'
            f'</services></assembly></assemblies></deployable>')


def figures(label: str, values: list[float]) -> str:
    ordered = sorted(values)
    p99 = ordered[min(len(ordered) - 1, int(round(0.99 * (len(ordered) - 1))))]
    return (f"{label:<44} median {statistics.median(ordered) * 1000:7.1f} ms  "
            f"p99 {p99 * 1000:7.1f} ms  max {ordered[-1] * 1000:7.1f} ms  n={len(ordered)}")


def bench_resources(watch: Watcher, tag: str, kills: int) -> None:
    seen, internal = [], []
    for k in range(kills):
        rsc = f"r{k % RESOURCES}"
        pids = pgrep(f"sleep {tag}{k % RESOURCES:02d}")
        if len(pids) != 1:
            raise RuntimeError(f"expected one process for {rsc}, found {pids}")
        time.sleep(random.uniform(0.4, 0.7))
        killed = time.time()
        os.kill(pids[0], signal.SIGKILL)
        arrived, event = watch.wait(killed, resource=rsc, state="running")
        seen.append(arrived - killed)
        internal.append(float(event.extra.get("duration_ms", "nan")) / 1000.0)
    print(figures("process resource: SIGKILL -> running event", seen))
    print(figures("process resource: detected -> recovered (DPE)", internal))


def bench_assembly(watch: Watcher, spec: AssemblySpec, kills: int) -> None:
    timeout = HB_INTERVAL * HB_MISSES
    detect, react, back = [], [], []
    for _ in range(kills):
        time.sleep(5.5 + random.uniform(0, HB_INTERVAL))   # healthy uptime: no back-off
        pid = json.loads((spec.state_dir / "sandbox.pid").read_text())["pid"]
        killed = time.time()
        os.kill(pid, signal.SIGKILL)
        _, failed = watch.wait(killed, assembly="a", state="failed", type="assembly_state_change")
        _, boot = watch.wait(killed, assembly="a", state="starting",
                             type="assembly_state_change")
        arrived, _ = watch.wait(killed, resource="r0", state="running")
        detect.append(failed.time.timestamp() - killed)
        react.append(boot.time.timestamp() - failed.time.timestamp())
        back.append(arrived - killed)
    print(f"heartbeat timeout (interval {HB_INTERVAL:g} s x {HB_MISSES} misses): "
          f"{timeout * 1000:.0f} ms; goal: detection <= {(timeout + 0.1) * 1000:.0f} ms")
    print(figures("assembly: SIGKILL -> loss detected", detect))
    print(figures("assembly: loss detected -> restart begins", react))
    print(figures("assembly: SIGKILL -> its resources running", back))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=30)
    parser.add_argument("--assembly-kills", type=int, default=5)
    parser.add_argument("--engine", default="native")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="pcloud-mttr-"))
    private = None
    if not os.environ.get("PCLOUD_BROKER_URL"):
        from pcloud import broker
        private = workdir / "broker"
        os.environ["PCLOUD_BROKER_URL"] = broker.start(private)
        os.environ["PCLOUD_BROKER_ADMIN"] = str(private)   # the DPE mints its agents' logins
        print(f"private broker at {os.environ['PCLOUD_BROKER_URL'].split('@')[-1]}")
    url = os.environ["PCLOUD_BROKER_URL"]
    name, tag = f"mttr{uuid.uuid4().hex[:6]}", f"{8000 + random.randint(0, 999)}.7"
    dep = Deployable.from_xml(document(name, tag))
    bus = Bus(url=url, name="bench-mttr").start()
    watch = Watcher(bus, name)
    dpe = Dpe(dep, workdir, engine=args.engine, broker_url=url)
    thread = run_in_thread(dpe)
    specs = [AssemblySpec(name, a, "u", url, workdir / "dpe" / name / "assemblies" / a)
             for a in ("a", "b")]
    try:
        watch.wait(0, timeout=120, type="deployable_state_change", state="running")
        print(f"engine {args.engine}; {RESOURCES} process resources, kills round-robin")
        time.sleep(5.5)
        bench_resources(watch, tag, args.kills)
        if args.assembly_kills:
            bench_assembly(watch, specs[0], args.assembly_kills)
    finally:
        try:
            bus.call(f"pcloud.dpe.{name}", "deployable_stop", f'<deployable name="{name}"/>')
            thread.join(60)
        finally:
            for spec in specs:
                ProcessDriver().fence(spec)
            bus.close()
            if private is not None:
                from pcloud import broker
                broker.stop(private)
    return 0


if __name__ == "__main__":
    sys.exit(main())
