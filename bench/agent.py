"""Guest agent figures: its idle cost, SIGKILL → failure report latency, its cost at 55 resources.

Usage: .venv/bin/python bench/agent.py [--broker-url URL] [-n 40] [--duration 30] [--peer DIR]
       [--rounds 1]

Runs a real pcloud-agent subprocess on the broker (PCLOUD_BROKER_URL or the dev broker).
1. idle with a few resources (3 `sleep` process resources, 5 s monitors, 1 s heartbeats):
   the agent's RSS, PSS, threads and CPU in ms per second over --duration seconds
   (issue 13 targets: <= 25 MiB RSS, <= 0.5 ms CPU/s). With ``--peer DIR`` the agent of
   another checkout is measured too, in the same run, and the ratios printed.
2. kill -9 of a `process` resource, n times: time until its <report> arrives on the bus
   (client and agent on one host, same monotonic clock). Target: median < 50 ms.
3. 50 `sleep` process resources with 2 s monitors plus 5 Dummy OCF resources with 1 s
   monitors: the agent's RSS and CPU% over --duration seconds.
"""

from __future__ import annotations

import argparse
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

from lxml import etree

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pcloud.bus import Bus  # noqa: E402
from pcloud.bus.bus import login_of  # noqa: E402
from pcloud.identity import reply_topic_key  # noqa: E402
from pcloud.wire.resource_op import ResourceDef, ResourceOp  # noqa: E402
from pcloud.wire.results import Report  # noqa: E402

AGENT = str(Path(sys.executable).with_name("pcloud-agent"))
TICKS = os.sysconf("SC_CLK_TCK")


def op(name: str, operation: str, cls: str = "process", interval: int = 0,
       command: str = "sleep 600") -> str:
    if cls == "ocf":
        res = ResourceDef(name, "ocf", "heartbeat", "Dummy")
    else:
        res = ResourceDef(name, "process", params={"command": command})
    return etree.tostring(ResourceOp(operation, res, interval).to_xml(), encoding="unicode")


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        line = next(x for x in f if x.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


def cpu_ns(pid: int) -> int:
    """CPU time of every live thread of a process, in ns (schedstat: /proc/<pid>/stat counts
    10 ms ticks, too coarse for an idle process's ~1 ms per second)."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
        except (OSError, ValueError):
            pass
    return total


def memory(pid: int) -> tuple[float, float, int]:
    """(RSS MiB, PSS MiB, threads) of a process, from /proc."""
    with open(f"/proc/{pid}/status") as f:
        status = dict(line.split(":", 1) for line in f if ":" in line)
    with open(f"/proc/{pid}/smaps_rollup") as f:
        pss = next(int(x.split()[1]) for x in f if x.startswith("Pss:"))
    return int(status["VmRSS"].split()[0]) / 1024, pss / 1024, int(status["Threads"])


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


class RunningAgent:
    """A real pcloud-agent on the broker, with this bench as its DPE; ``pythonpath`` runs
    the agent of another checkout (a peer to compare with)."""

    def __init__(self, bus: Bus, url: str, user: str, pythonpath: str | None = None) -> None:
        self.dep, self.asm = "bench" + uuid.uuid4().hex[:6], "a1"
        self.queue = f"pcloud.agent.{self.dep}.{self.asm}"
        self.state = tempfile.mkdtemp(prefix="pcloud-bench-agent-")
        self.arrivals: dict[str, list[float]] = {}
        self.cond = threading.Condition()
        beats = threading.Event()
        self.subs = [bus.subscribe(f"pcloud.report.{self.dep}.{self.asm}", self._on_report),
                     bus.subscribe(f"pcloud.heartbeat.{self.dep}.{self.asm}",
                                   lambda m: beats.set())]
        for sub in self.subs:
            sub.wait_attached(10)
        env = dict(os.environ)
        if pythonpath:
            env["PYTHONPATH"] = pythonpath
        self.proc = subprocess.Popen(
            [AGENT, "--foreground", "--deployable", self.dep, "--assembly", self.asm,
             "--broker-url", url, "--state-dir", self.state, "--controller", user],
            stderr=subprocess.DEVNULL, env=env)
        if not beats.wait(30):
            self.close()
            raise SystemExit("agent did not heartbeat")

    def _on_report(self, msg) -> None:
        report = Report.from_xml(etree.fromstring(msg.body.encode()))
        with self.cond:
            self.arrivals.setdefault(report.resource, []).append(time.monotonic())
            self.cond.notify_all()

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()
        folder = os.path.join(self.state, "resources")
        for name in os.listdir(folder) if os.path.isdir(folder) else []:
            kill_recorded(os.path.join(folder, name))
        for sub in self.subs:
            sub.cancel()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--broker-url", default=os.environ.get(
        "PCLOUD_BROKER_URL", "amqp://pcloud:pcloud@127.0.0.1:5700"))
    parser.add_argument("-n", type=int, default=40)
    parser.add_argument("--duration", type=float, default=30.0)
    parser.add_argument("--peer", metavar="DIR",
                        help="also measure the agent of another checkout (e.g. from "
                             "'git worktree add DIR REV'), in the same run, for ratios")
    parser.add_argument("--rounds", type=int, default=1,
                        help="idle measurements per agent, alternated (medians printed)")
    args = parser.parse_args()

    user = login_of(args.broker_url) or "pcloud"
    # this bench plays the agent's DPE: its controller, answered on a reply topic key
    bus = Bus(url=args.broker_url, name="bench-agent",
              reply_topic_key=reply_topic_key(user)).start()
    try:
        labels = ([("peer", args.peer)] if args.peer else []) + [("this", None)]
        idle: dict[str, list[tuple[float, float, int, float]]] = {}
        for _ in range(args.rounds):          # alternated, so both see the same host load
            for label, path in labels:
                agent = RunningAgent(bus, args.broker_url, user, path)
                try:
                    idle.setdefault(label, []).append(
                        idle_cost(bus, agent.queue, agent.proc.pid, args.duration))
                finally:
                    agent.close()
        medians = {label: [statistics.median(run[i] for run in runs) for i in range(4)]
                   for label, runs in idle.items()}
        for label, (rss, pss, threads, cpu_ms) in medians.items():
            cpus = ", ".join(f"{run[3]:.2f}" for run in idle[label])
            print(f"{label}: idle, 3 process resources (5 s monitors), 1 s heartbeats, "
                  f"{args.rounds} x {args.duration:g} s (medians): RSS {rss:.1f} MiB, "
                  f"PSS {pss:.1f} MiB, {threads:g} threads, CPU {cpu_ms:.2f} ms/s "
                  f"(runs: {cpus}) (targets <= 25 MiB RSS, <= 0.5 ms/s)")
        if args.peer:
            (r0, p0, _, c0), (r1, p1, _, c1) = medians["peer"], medians["this"]
            print(f"this/peer: RSS {r1 / r0:.2f}, PSS {p1 / p0:.2f}, idle CPU {c1 / c0:.2f}")
        for label, path in labels:
            agent = RunningAgent(bus, args.broker_url, user, path)
            try:
                latencies = kill_latency(bus, agent.queue, agent.arrivals, agent.cond, args.n)
                print(f"{label}: SIGKILL -> report on the bus (n={len(latencies)}): "
                      f"median {statistics.median(latencies):.2f} ms, "
                      f"p99 {percentile(latencies, 99):.2f} ms, max {max(latencies):.2f} ms "
                      f"(target < 50 ms)")
            finally:
                agent.close()
        for label, path in labels:
            agent = RunningAgent(bus, args.broker_url, user, path)
            try:
                rss, cpu = load_cost(bus, agent.queue, agent.proc.pid, args.duration)
            finally:
                agent.close()
            print(f"{label}: 50 process (2 s monitors) + 5 Dummy OCF (1 s monitors) over "
                  f"{args.duration:g} s: agent RSS {rss:.1f} MiB, CPU {cpu:.2f} %")
    finally:
        bus.close()
    return 0


def idle_cost(bus: Bus, queue: str, pid: int,
              duration: float) -> tuple[float, float, int, float]:
    """Peak RSS, PSS and threads, and CPU ms per second, of an agent with 3 quiet resources."""
    for i in range(3):
        bus.call(queue, "resource_start", op(f"i{i}", "start"))
        bus.call(queue, "resource_monitor", op(f"i{i}", "monitor", interval=5000))
    time.sleep(2)
    cpu0, t0 = cpu_ns(pid), time.monotonic()
    rss = pss = 0.0
    threads = 0
    while time.monotonic() - t0 < duration:
        time.sleep(1)
        r, p, t = memory(pid)
        rss, pss, threads = max(rss, r), max(pss, p), max(threads, t)
    cpu_ms = (cpu_ns(pid) - cpu0) / 1e6 / (time.monotonic() - t0)
    for i in range(3):
        bus.call(queue, "resource_stop", op(f"i{i}", "stop"))
    return rss, pss, threads, cpu_ms


def kill_latency(bus: Bus, queue: str, arrivals, cond, n: int) -> list[float]:
    latencies = []
    bus.call(queue, "resource_start", op("victim", "start"))
    for _ in range(n):
        status = bus.call(queue, "resource_status", "<resources/>")
        pid = int(next(r for r in status if r.get("name") == "victim").get("pid"))
        with cond:
            seen = len(arrivals.get("victim", []))
        time.sleep(random.uniform(0.05, 0.15))
        killed = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        with cond:
            if not cond.wait_for(lambda s=seen: len(arrivals.get("victim", [])) > s, 10):
                raise SystemExit("no report within 10 s")
            latencies.append((arrivals["victim"][seen] - killed) * 1000)
        bus.call(queue, "resource_stop", op("victim", "stop"))
        bus.call(queue, "resource_start", op("victim", "start"))
    bus.call(queue, "resource_stop", op("victim", "stop"))
    return latencies


def load_cost(bus: Bus, queue: str, pid: int, duration: float) -> tuple[float, float]:
    for i in range(50):
        bus.call(queue, "resource_start", op(f"p{i}", "start"))
        bus.call(queue, "resource_monitor", op(f"p{i}", "monitor", interval=2000))
    for i in range(5):
        bus.call(queue, "resource_start", op(f"o{i}", "start", cls="ocf"))
        bus.call(queue, "resource_monitor", op(f"o{i}", "monitor", cls="ocf", interval=1000))
    time.sleep(2)
    cpu0, t0 = cpu_seconds(pid), time.monotonic()
    peak = 0.0
    while time.monotonic() - t0 < duration:
        time.sleep(1)
        peak = max(peak, rss_mib(pid))
    cpu = (cpu_seconds(pid) - cpu0) / (time.monotonic() - t0) * 100
    for i in range(50):
        bus.call(queue, "resource_stop", op(f"p{i}", "stop"))
    for i in range(5):
        bus.call(queue, "resource_stop", op(f"o{i}", "stop", cls="ocf"))
    return peak, cpu


def kill_recorded(path: str) -> None:
    import json

    try:
        with open(path) as f:
            os.killpg(json.load(f)["pgid"], signal.SIGKILL)
    except (OSError, ValueError, KeyError, TypeError):
        pass


if __name__ == "__main__":
    sys.exit(main())
