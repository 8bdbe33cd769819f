"""Guest agent figures: its idle cost, SIGKILL → failure report latency, its cost at 55 resources.

Usage: .venv/bin/python bench/agent.py [--broker-url URL] [-n 40] [--duration 30]

Runs a real pcloud-agent subprocess on the broker (PCLOUD_BROKER_URL or the dev broker).
1. idle with a few resources (3 `sleep` process resources, 5 s monitors, 1 s heartbeats):
   the agent's RSS, PSS, threads and CPU in ms per second over --duration seconds
   (issue 13 targets: <= 25 MiB RSS, <= 0.5 ms CPU/s).
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

AGENT = str(Path(sys.executable).with_name("pcloud-agent"))
TICKS = os.sysconf("SC_CLK_TCK")


def op(name: str, operation: str, cls: str = "process", interval: int = 0,
       command: str = "sleep 600") -> str:
    if cls == "ocf":
        res = f'<resource name="{name}" class="ocf" provider="heartbeat" type="Dummy"/>'
    else:
        res = (f'<resource name="{name}" class="process"><parameters>'
               f'<parameter name="command" value="{command}"/></parameters></resource>')
    return f'<resource_op operation="{operation}" interval="{interval}">{res}</resource_op>'


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        line = next(x for x in f if x.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--broker-url", default=os.environ.get(
        "PCLOUD_BROKER_URL", "amqp://pcloud:pcloud@127.0.0.1:5700"))
    parser.add_argument("-n", type=int, default=40)
    parser.add_argument("--duration", type=float, default=30.0)
    args = parser.parse_args()

    dep, asm = "bench" + uuid.uuid4().hex[:6], "a1"
    queue = f"pcloud.agent.{dep}.{asm}"
    state = tempfile.mkdtemp(prefix="pcloud-bench-agent-")
    user = login_of(args.broker_url) or "pcloud"
    # this bench plays the agent's DPE: its controller, answered on a reply topic key
    bus = Bus(url=args.broker_url, name="bench-agent",
              reply_topic_key=reply_topic_key(user)).start()
    arrivals: dict[str, list[float]] = {}
    cond = threading.Condition()
    beats = threading.Event()

    def on_report(msg) -> None:
        elem = etree.fromstring(msg.body.encode())
        with cond:
            arrivals.setdefault(elem.get("resource"), []).append(time.monotonic())
            cond.notify_all()

    for sub in (bus.subscribe(f"pcloud.report.{dep}.{asm}", on_report),
                bus.subscribe(f"pcloud.heartbeat.{dep}.{asm}", lambda m: beats.set())):
        sub.wait_attached(10)
    agent = subprocess.Popen([AGENT, "--foreground", "--deployable", dep, "--assembly", asm,
                              "--broker-url", args.broker_url, "--state-dir", state,
                              "--controller", user],
                             stderr=subprocess.DEVNULL)
    try:
        if not beats.wait(30):
            print("agent did not heartbeat", file=sys.stderr)
            return 1
        rss, pss, threads, cpu_ms = idle_cost(bus, queue, agent.pid, args.duration)
        print(f"idle, 3 process resources (5 s monitors), 1 s heartbeats, over "
              f"{args.duration:g} s: RSS {rss:.1f} MiB, PSS {pss:.1f} MiB, {threads} threads, "
              f"CPU {cpu_ms:.2f} ms/s (targets <= 25 MiB RSS, <= 0.5 ms/s)")
        latencies = kill_latency(bus, queue, arrivals, cond, args.n)
        print(f"SIGKILL -> report on the bus (n={len(latencies)}): "
              f"median {statistics.median(latencies):.2f} ms, "
              f"p99 {percentile(latencies, 99):.2f} ms, max {max(latencies):.2f} ms "
              f"(target < 50 ms)")
        rss, cpu = load_cost(bus, queue, agent.pid, args.duration)
        print(f"50 process (2 s monitors) + 5 Dummy OCF (1 s monitors) over "
              f"{args.duration:g} s: agent RSS {rss:.1f} MiB, CPU {cpu:.2f} %")
    finally:
        agent.kill()
        agent.wait()
        for name in os.listdir(os.path.join(state, "resources")) if os.path.isdir(
                os.path.join(state, "resources")) else []:
            kill_recorded(os.path.join(state, "resources", name))
        bus.close()
    return 0


def idle_cost(bus: Bus, queue: str, pid: int,
              duration: float) -> tuple[float, float, int, float]:
    """Peak RSS, PSS and threads, and CPU ms per second, of an agent with 3 quiet resources."""
    for i in range(3):
        bus.call(queue, "resource_start", op(f"i{i}", "start"))
        bus.call(queue, "resource_monitor", op(f"i{i}", "monitor", interval=5000))
    time.sleep(2)
    cpu0, t0 = cpu_seconds(pid), time.monotonic()
    rss = pss = 0.0
    threads = 0
    while time.monotonic() - t0 < duration:
        time.sleep(1)
        r, p, t = memory(pid)
        rss, pss, threads = max(rss, r), max(pss, p), max(threads, t)
    cpu_ms = (cpu_seconds(pid) - cpu0) / (time.monotonic() - t0) * 1000
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
