"""Scale: N simulated assemblies over D deployables, watched by the real cped, dpeds and broker.

One process simulates every guest agent (issue 13): each simulated assembly logs in to the
broker with the fresh per-boot login its DPE minted (handed over by the bench-only driver,
``bench/simdriver.py``), heartbeats on ``pcloud.heartbeat.<dep>.<asm>`` with that login as
``user_id``, answers resource operations on ``pcloud.agent.<dep>.<asm>`` (start, stop,
monitor, cancel), and on command reports a resource failure or dies (stops beating and
answering). The private broker, ``cped`` and one ``dped`` per deployable are the real ones:
the driver switch (``PCLOUD_BENCH_SIMULATOR``) is set only in their environment.

Per run ``NxD`` it starts everything fresh, waits until every deployable is ``running``,
then measures ``--window`` seconds of heartbeats only and ``--fault-window`` seconds of
injected faults, and prints one row:

- CPU per heartbeat (ms) of the dpeds (mean over them, and the busiest), of cped and of the
  broker: process CPU time over the quiet window divided by the beats the simulator sent
  (all a process does in the steady state, its own timers included);
- false failures over both windows: a fence or stop of an assembly that did not die, or a
  restart of a resource that did not fail (must be 0);
- detection of simulated deaths: from the dead assembly's last beat to its fence (p50, p99;
  the target is ``interval x misses`` + 0.5 s);
- MTTR of simulated resource failures: from the failure report to the answered start;
- RSS (MiB) of the dpeds (sum and largest), cped, broker, and this simulator;
- holds: no false failure, detection p99 within target, every beat sent on time (a beat
  more than 0.2 s late means the simulator itself was starved).

    .venv/bin/python bench/scale.py --runs 100x1,1000x10,5000x50 [--window 60]

The machine is shared: read the figures with ``uptime`` (printed) and as ratios.
"""

from __future__ import annotations

import argparse
import hashlib
import heapq
import json
import os
import queue
import random
import resource
import shutil
import signal
import socketserver
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lxml import etree  # noqa: E402
from proton.handlers import MessagingHandler  # noqa: E402
from proton.reactor import Container  # noqa: E402

from pcloud import broker, procstat, wire  # noqa: E402
from pcloud.bus import Bus, BusError, Message  # noqa: E402
from pcloud.infrastructures import SIMULATOR_SWITCH  # noqa: E402
from pcloud.wire.heartbeat import HeartbeatText  # noqa: E402
from pcloud.wire.resource_op import ResourceOp  # noqa: E402
from pcloud.wire.results import OpResult, Report  # noqa: E402

BIN = Path(sys.executable).parent
TICK = 0.02                 # the simulator's timer: beats due and commands
INTERVAL, MISSES = 1.0, 3
MONITOR = 10                # seconds: the resources' monitor interval
CLK = os.sysconf("SC_CLK_TCK")


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p))]


@dataclass
class Agent:
    """One simulated guest agent (proton thread only)."""

    deployable: str
    name: str
    uuid: str
    user: str
    url: str
    interval: float
    boot: int
    conn: object = None
    senders: dict = field(default_factory=dict)
    seq: int = 0
    started: str = field(default_factory=wire.now)
    running: set = field(default_factory=set)      # resources it runs
    dead: bool = False
    died_at: float = 0.0
    last_beat: float = 0.0
    failed: dict = field(default_factory=dict)     # resource -> when it "failed"
    starts: dict = field(default_factory=dict)     # resource -> starts this boot
    address: str = ""
    text: HeartbeatText | None = None              # its beats' fixed part
    _digest: tuple[frozenset, str] = (frozenset(), "")

    @property
    def key(self) -> tuple[str, str]:
        return self.deployable, self.name

    def digest(self) -> str:
        """The digest of the resources' states, as a real agent's heartbeat carries it."""
        if self._digest[0] != self.running or not self._digest[1]:
            lines = "\n".join(f"{r}=running" for r in sorted(self.running))
            self._digest = (frozenset(self.running), hashlib.md5(lines.encode()).hexdigest())
        return self._digest[1]


class Farm(MessagingHandler):
    """Every simulated agent in one proton container; commands come through ``commands``."""

    def __init__(self, host: str) -> None:
        super().__init__(prefetch=10, auto_accept=True)
        self.host = host
        self.commands: queue.SimpleQueue = queue.SimpleQueue()
        self.agents: dict[tuple[str, str], Agent] = {}
        self.by_conn: dict[object, Agent] = {}
        self.due: list[tuple[float, int, tuple[str, str]]] = []
        self.boots = 0
        self.beats: dict[str, int] = {}                 # deployable -> beats sent
        self.late_beats = 0                             # sent > 0.2 s after they were due
        self.fences: list[tuple[float, str, tuple[str, str], bool]] = []  # t, op, key, dead
        self.detections: list[float] = []
        self.mttr: list[float] = []
        self.false: list[str] = []
        self.measuring = False
        self.errors = 0
        self.container: Container | None = None
        self.rng = random.Random()

    # ---- proton thread -------------------------------------------------------------
    def on_start(self, event) -> None:
        self.container = event.container
        self.container.schedule(TICK, self)

    def on_timer_task(self, event) -> None:
        while True:
            try:
                command, args, done = self.commands.get_nowait()
            except queue.Empty:
                break
            try:
                done.put(getattr(self, f"_do_{command}")(*args))
            except Exception as exc:
                done.put({"ok": False, "error": str(exc)})
        now = time.monotonic()
        while self.due and self.due[0][0] <= now:
            when, boot, key = heapq.heappop(self.due)
            agent = self.agents.get(key)
            if agent is None or agent.boot != boot or agent.dead:
                continue
            if now - when > 0.2:
                self.late_beats += 1
            self._beat(agent, now)
            heapq.heappush(self.due, (when + agent.interval, boot, key))
        self.container.schedule(TICK, self)

    def _send(self, agent: Agent, address: str, message: Message) -> None:
        sender = agent.senders.get(address)
        if sender is None:
            sender = agent.senders[address] = self.container.create_sender(agent.conn, address)
        message.user_id = agent.user
        sender.send(message.to_proton())

    def _beat(self, agent: Agent, now: float) -> None:
        agent.seq += 1
        if agent.text is None:
            agent.text = HeartbeatText.fixed({
                "deployable": agent.deployable, "assembly": agent.name, "uuid": agent.uuid,
                "started": agent.started, "pid": str(os.getpid())})
        body = agent.text.beat(agent.seq, agent.interval, agent.digest(), wire.now(),
                               agent.address if agent.seq == 1 else None)
        self._send(agent, f"/topic/pcloud.heartbeat.{agent.deployable}.{agent.name}",
                   Message(body=body, subject="heartbeat", opcode="heartbeat"))
        agent.last_beat = now
        self.beats[agent.deployable] = self.beats.get(agent.deployable, 0) + 1

    def on_message(self, event) -> None:
        agent = self.by_conn.get(event.connection)
        if agent is None or agent.dead:
            return
        msg = Message.from_proton(event.message)
        try:
            op = ResourceOp.from_xml(etree.fromstring(msg.body.encode()))
            rsc, operation, interval = op.resource.name, op.operation, op.interval
        except Exception:
            self._answer(agent, msg, '<response rc="1"><error code="unknown_method" '
                                     'message="the simulator only runs resource operations"/>'
                                     '</response>')
            return
        rc = 0
        if operation == "start":
            agent.starts[rsc] = agent.starts.get(rsc, 0) + 1
            failed = agent.failed.pop(rsc, None)
            if failed is not None:
                self.mttr.append(time.monotonic() - failed)
            elif agent.starts[rsc] > 1 and self.measuring:
                self.false.append(f"{agent.deployable}/{agent.name}/{rsc} restarted, not failed")
            agent.running.add(rsc)
        elif operation == "stop":
            agent.running.discard(rsc)
        elif operation == "monitor":
            rc = 0 if rsc in agent.running and rsc not in agent.failed else 7
        response = etree.Element("response", rc="0")
        response.append(OpResult(rsc, operation, rc, wire.now(), interval=interval,
                                 duration_ms=1).to_xml())
        self._answer(agent, msg, response)

    def _answer(self, agent: Agent, request: Message, body: str | etree._Element) -> None:
        if not request.reply_to:
            return
        self._send(agent, request.reply_to, Message(
            body=body, subject=request.subject, opcode="method_response",
            correlation_id=request.correlation_id))

    def on_transport_error(self, event) -> None:
        self.errors += 1

    def on_connection_error(self, event) -> None:
        self.errors += 1

    # ---- commands (proton thread) -----------------------------------------------------
    def _do_start(self, req: dict) -> dict:
        key = (req["deployable"], req["name"])
        self._close(key)
        self.boots += 1
        index = self.boots
        login = f"{quote(req['user'], safe='')}:{quote(req['password'], safe='')}"
        agent = Agent(req["deployable"], req["name"], req["uuid"], req["user"],
                      f"amqp://{login}@{self.host}",
                      float(req["interval"]), index,
                      address=f"10.{index // 65536 % 256}.{index // 256 % 256}.{index % 256}")
        agent.conn = self.container.connect(agent.url, allowed_mechs="PLAIN",
                                            allow_insecure_mechs=True, reconnect=False,
                                            heartbeat=60)
        self.container.create_receiver(agent.conn, f"pcloud.agent.{key[0]}.{key[1]}")
        self.agents[key] = agent
        self.by_conn[agent.conn] = agent
        first = time.monotonic() + 0.2 + random.random() * agent.interval
        heapq.heappush(self.due, (first, index, key))
        return {"ok": True}

    def _close(self, key: tuple[str, str]) -> Agent | None:
        agent = self.agents.pop(key, None)
        if agent is not None:
            self.by_conn.pop(agent.conn, None)
            agent.conn.close()
        return agent

    def _do_stop(self, req: dict, op: str = "stop") -> dict:
        key = (req["deployable"], req["name"])
        agent = self._close(key)
        if agent is not None and self.measuring:
            now = time.monotonic()
            self.fences.append((now, op, key, agent.dead))
            if agent.dead:
                self.detections.append(now - agent.last_beat)
            else:
                self.false.append(f"{key[0]}/{key[1]} {op} while alive")
        return {"ok": True}

    def _do_fence(self, req: dict) -> dict:
        return self._do_stop(req, "fence")

    def _do_status(self, req: dict) -> dict:
        key = (req["deployable"], req["name"])
        return {"ok": True, "state": "running" if key in self.agents else "stopped"}

    def _do_kill(self, key: tuple[str, str]) -> dict:
        agent = self.agents.get(key)
        if agent is None or agent.dead or not agent.seq:
            return {"ok": False}
        agent.dead, agent.died_at = True, time.monotonic()
        return {"ok": True}

    def _do_fail(self, key: tuple[str, str]) -> dict:
        agent = self.agents.get(key)
        if agent is None or agent.dead or not agent.running or agent.failed:
            return {"ok": False}
        rsc = sorted(agent.running)[0]
        agent.failed[rsc] = time.monotonic()
        body = Report(key[0], key[1], rsc, 7, wire.now(), interval=MONITOR * 1000,
                      uuid=agent.uuid, reason="simulated failure").to_xml()
        self._send(agent, f"/topic/pcloud.report.{key[0]}.{key[1]}",
                   Message(body=body, subject="resource_report", opcode="report"))
        return {"ok": True}

    def _alive(self) -> list[tuple[str, str]]:
        return [a.key for a in self.agents.values() if a.seq and not a.dead]

    def _do_kill_any(self, seed: int) -> dict:
        keys = self._alive()
        return self._do_kill(random.Random(seed).choice(keys)) if keys else {"ok": False}

    def _do_fail_any(self, seed: int) -> dict:
        keys = self._alive()
        return self._do_fail(random.Random(seed).choice(keys)) if keys else {"ok": False}

    def _do_snapshot(self) -> dict:
        return {"ok": True, "beats": dict(self.beats), "late": self.late_beats,
                "running": len(self._alive())}

    def _do_results(self) -> dict:
        return {"ok": True, "false": list(self.false), "detect": list(self.detections),
                "mttr": list(self.mttr)}

    def _do_measure(self, on: bool) -> dict:
        self.measuring = on
        return {"ok": True}


class _Reply:
    """Where a shard's farm puts one command's answer: a JSON line on the shard's stdout."""

    lock = threading.Lock()

    def __init__(self, ident: int) -> None:
        self.ident = ident

    def put(self, reply: dict) -> None:
        line = json.dumps({"id": self.ident, "reply": reply}) + "\n"
        with self.lock:
            sys.stdout.write(line)
            sys.stdout.flush()


def shard_main(host: str) -> int:
    """A shard process: one Farm, commands as JSON lines on stdin, answers on stdout."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)     # the parent ends it by closing stdin
    farm = Farm(host)
    threading.Thread(target=Container(farm).run, daemon=True, name="farm").start()
    for line in sys.stdin:
        request = json.loads(line)
        farm.commands.put((request["op"], request["args"], _Reply(request["id"])))
    return 0


class Shards:
    """The simulated agents, spread over shard processes of at most ``size`` agents each.

    One proton container does not carry thousands of connections: its Python reactor
    selects with select(2), which ends at descriptor 1024, and rescans every connection's
    deadline on each I/O update, so its cost grows with the square of the connections (at
    1,000 agents in one process, half the simulator's CPU went to that rescan and beats were
    late). An assembly always lives in the shard its name hashes to.
    """

    def __init__(self, host: str, count: int) -> None:
        self.procs = [subprocess.Popen([sys.executable, __file__, "--shard", host],
                                       stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                       text=True, bufsize=1) for _ in range(count)]
        self._lock = threading.Lock()
        self._next = 0
        self._waiting: dict[int, queue.SimpleQueue] = {}
        for proc in self.procs:
            threading.Thread(target=self._read, args=(proc,), daemon=True).start()

    def _read(self, proc: subprocess.Popen) -> None:
        for line in proc.stdout:
            answer = json.loads(line)
            with self._lock:
                waiter = self._waiting.pop(answer["id"], None)
            if waiter is not None:
                waiter.put(answer["reply"])

    def ask(self, index: int, command: str, *args) -> dict:
        done: queue.SimpleQueue = queue.SimpleQueue()
        with self._lock:
            self._next += 1
            ident = self._next
            self._waiting[ident] = done
            self.procs[index].stdin.write(
                json.dumps({"id": ident, "op": command, "args": args}) + "\n")
        return done.get(timeout=120)

    def owner(self, deployable: str, name: str) -> int:
        return zlib.crc32(f"{deployable}/{name}".encode()) % len(self.procs)

    def ask_owner(self, command: str, req: dict) -> dict:
        return self.ask(self.owner(req["deployable"], req["name"]), command, req)

    def ask_all(self, command: str, *args) -> list[dict]:
        return [self.ask(i, command, *args) for i in range(len(self.procs))]

    def snapshot(self) -> dict:
        beats: dict[str, int] = {}
        late = running = 0
        for part in self.ask_all("snapshot"):
            for name, count in part["beats"].items():
                beats[name] = beats.get(name, 0) + count
            late += part["late"]
            running += part["running"]
        return {"beats": beats, "late": late, "running": running}

    def results(self) -> dict:
        merged: dict[str, list] = {"false": [], "detect": [], "mttr": []}
        for part in self.ask_all("results"):
            for key in merged:
                merged[key].extend(part[key])
        return merged

    def pids(self) -> list[int]:
        return [proc.pid for proc in self.procs]

    def close(self) -> None:
        for proc in self.procs:
            proc.stdin.close()
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


class Control(socketserver.ThreadingUnixStreamServer):
    """The simulator's socket: one JSON line per driver call (``bench/simdriver.py``)."""

    daemon_threads = True
    request_queue_size = 256        # every dped's pool (16 threads each) may call at once

    def __init__(self, path: str, shards: Shards) -> None:
        self.shards = shards
        super().__init__(path, _ControlHandler)


class _ControlHandler(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        try:
            req = json.loads(self.rfile.readline())
            reply = self.server.shards.ask_owner(req["op"], req)
        except Exception as exc:
            reply = {"ok": False, "error": str(exc)}
        self.wfile.write(json.dumps(reply).encode() + b"\n")


# ---- processes ---------------------------------------------------------------------------

def cpu_seconds(pid: int) -> float:
    return (procstat.cpu_ticks(pid) or 0) / CLK


def rss_mib(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


class Run:
    """One ``NxD`` run: a fresh broker, cped and deployables."""

    def __init__(self, n: int, d: int, args: argparse.Namespace) -> None:
        self.n, self.d, self.args = n, d, args
        self.work = Path(tempfile.mkdtemp(prefix="pcloud-scale-"))
        self.state = self.work / "state"
        self.broker_dir = self.work / "broker"
        self.sock = str(self.work / "sim.sock")
        self.names = [f"s{i}" for i in range(d)]
        self.sizes = [n // d + (1 if i < n % d else 0) for i in range(d)]
        self.cped: subprocess.Popen | None = None
        self.client: Bus | None = None
        self.shards: Shards | None = None
        self.control: Control | None = None
        self.url = ""

    def document(self, name: str, size: int) -> str:
        asms = "".join(
            f'<assembly name="a{i}" heartbeat_interval="{INTERVAL:g}" '
            f'heartbeat_misses="{MISSES}"><services><service name="svc" class="process" '
            f'monitor_interval="{MONITOR}"><parameters><parameter name="command" '
            f'value="sleep infinity"/></parameters></service></services></assembly>'
            for i in range(size))
        return (f'<deployable name="{name}" infrastructure="process"><assemblies>{asms}'
                f'</assemblies></deployable>')

    def start(self) -> float:
        ports = (broker.free_port(), broker.free_port(), broker.free_port())
        self.url = broker.start(self.broker_dir, port=ports[0], dist_port=ports[1],
                                epmd_port=ports[2])
        self.shards = Shards(self.url.split("@", 1)[1].split("//")[-1],
                             max(1, -(-self.n // self.args.shard_size)))
        self.control = Control(self.sock, self.shards)
        os.chmod(self.sock, 0o600)
        threading.Thread(target=self.control.serve_forever, daemon=True).start()
        self.state.mkdir(parents=True)
        env = dict(os.environ, PCLOUD_BROKER_URL=self.url, PCLOUD_STATE_DIR=str(self.state),
                   PCLOUD_BROKER_ADMIN=str(self.broker_dir), PYTHONPATH=str(ROOT),
                   **{SIMULATOR_SWITCH: self.sock})
        with open(self.work / "cped.log", "ab") as log:
            self.cped = subprocess.Popen([str(BIN / "cped"), "--foreground", "--state-dir",
                                          str(self.state)], stdout=log, stderr=log, env=env,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        self.client = Bus(url=self.url, name="scale").start(timeout=30)
        deadline = time.monotonic() + 60
        while True:
            try:
                self.client.call("pcloud.cpe", "deployables_list", "<deployables/>", timeout=5)
                break
            except BusError:
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"cped does not answer; see {self.work / 'cped.log'}") from None
                time.sleep(0.5)
        began = time.monotonic()
        for name, size in zip(self.names, self.sizes, strict=True):
            self.client.call("pcloud.cpe", "deployable_start", self.document(name, size),
                             timeout=60)
        deadline = began + self.args.boot_timeout
        while time.monotonic() < deadline:
            states = self.states()
            if states and all(s == "running" for s in states.values()):
                return time.monotonic() - began
            time.sleep(1.0)
        raise RuntimeError(f"not all running after {self.args.boot_timeout} s: "
                           f"{sorted(set(self.states().values()))}; {self.work}")

    def states(self) -> dict[str, str]:
        try:
            listed = self.client.call("pcloud.cpe", "deployables_list", "<deployables/>",
                                      timeout=10)
        except BusError:
            return {}
        return {d.get("name"): d.get("state") for d in listed if d.get("name") in self.names}

    def dped_pids(self) -> dict[str, int]:
        pids = {}
        for name in self.names:
            try:
                pids[name] = int((self.state / "dpe" / name / "dped.pid").read_text())
            except (OSError, ValueError):
                pass
        return pids

    def pids(self) -> dict[str, list[int]]:
        return {"dped": list(self.dped_pids().values()), "cped": [self.cped.pid],
                "broker": broker.node_pids(self.broker_dir),
                "sim": [os.getpid(), *self.shards.pids()]}

    def measure(self) -> dict:
        """A quiet window for the CPU per heartbeat (beats only: the steady state), then a
        window of simulated deaths and failures; false failures are counted in both."""
        shards = self.shards
        dpeds = self.dped_pids()
        pids = self.pids()
        cpu0 = {k: {p: cpu_seconds(p) for p in v} for k, v in pids.items()}
        dcpu0 = {n: cpu_seconds(p) for n, p in dpeds.items()}
        snap0 = shards.snapshot()
        shards.ask_all("measure", True)
        began = time.monotonic()
        time.sleep(self.args.window)
        quiet = time.monotonic() - began
        snap1 = shards.snapshot()
        cpu1 = {k: {p: cpu_seconds(p) for p in v} for k, v in pids.items()}
        dcpu1 = {n: cpu_seconds(p) for n, p in dpeds.items()}
        rss = {k: [rss_mib(p) for p in v] for k, v in pids.items()}
        rng = random.Random(self.n)
        began = time.monotonic()
        deaths = fails = 0
        next_death = began + self.args.death_every / 2
        next_fail = began + self.args.fail_every / 2
        count = len(shards.procs)
        while time.monotonic() < began + self.args.fault_window:
            now = time.monotonic()
            if now >= next_death:
                deaths += shards.ask(rng.randrange(count), "kill_any", rng.random())["ok"]
                next_death += self.args.death_every
            if now >= next_fail:
                fails += shards.ask(rng.randrange(count), "fail_any", rng.random())["ok"]
                next_fail += self.args.fail_every
            time.sleep(0.2)
        time.sleep(MISSES * INTERVAL + 2)           # the last deaths are found and fenced
        snap2 = shards.snapshot()
        shards.ask_all("measure", False)
        found = shards.results()
        beats = {d: snap1["beats"].get(d, 0) - snap0["beats"].get(d, 0) for d in self.names}
        total = sum(beats.values()) or 1
        per_dped = [(dcpu1[n] - dcpu0[n]) / beats[n] * 1e3 for n in dcpu1 if beats.get(n)]

        def used(kind: str) -> float:
            """CPU of the processes alive at both ends (a helper that ran between is not
            counted: the broker's rabbitmqctl runs, which mint logins)."""
            return sum(max(0.0, cpu1[kind][p] - cpu0[kind][p]) for p in cpu0[kind]
                       if cpu1[kind].get(p))

        return {
            "N": self.n, "D": self.d, "window": quiet, "beats_per_s": total / quiet,
            "dped_ms": statistics.mean(per_dped) if per_dped else float("nan"),
            "dped_max_ms": max(per_dped, default=float("nan")),
            "dped_cores": (sum(dcpu1.values()) - sum(dcpu0.values())) / quiet,
            "cped_ms": used("cped") / total * 1e3, "broker_ms": used("broker") / total * 1e3,
            "broker_cores": used("broker") / quiet, "sim_cores": used("sim") / quiet,
            "false": found["false"], "deaths": deaths, "fails": fails,
            "detect": found["detect"], "mttr": found["mttr"],
            "late": snap2["late"] - snap0["late"],
            "rss_dped_sum": sum(rss["dped"]), "rss_dped_max": max(rss["dped"], default=0),
            "rss_cped": sum(rss["cped"]), "rss_broker": sum(rss["broker"]),
            "rss_sim": sum(rss["sim"]), "target": INTERVAL * MISSES + 0.5,
        }

    def close(self) -> None:
        if self.cped is not None:             # first, or it restarts the dpeds killed below
            self.cped.kill()
            self.cped.wait(30)
        for pid in self.dped_pids().values():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if self.client is not None:
            self.client.close()
        with_retry = 3
        while with_retry:
            with_retry -= 1
            try:
                broker.stop(self.broker_dir)
                break
            except Exception:
                time.sleep(1)
        if self.control is not None:
            self.control.shutdown()
            self.control.server_close()
        if self.shards is not None:
            self.shards.close()
        if not self.args.keep:
            shutil.rmtree(self.work, ignore_errors=True)


def row(r: dict, boot: float) -> str:
    holds = (not r["false"] and r["detect"] and pct(r["detect"], 0.99) <= r["target"]
             and r["late"] == 0)
    return (f"| {r['N']} | {r['D']} | {boot:.0f} | {r['beats_per_s']:.0f} | "
            f"{r['dped_ms']:.3f} / {r['dped_max_ms']:.3f} | {r['cped_ms']:.3f} | "
            f"{r['broker_ms']:.3f} ({r['broker_cores']:.2f} cores) | {len(r['false'])} | "
            f"{pct(r['detect'], 0.5):.2f} / {pct(r['detect'], 0.99):.2f} "
            f"(n={len(r['detect'])}) | "
            f"{pct(r['mttr'], 0.5) * 1e3:.0f} / {pct(r['mttr'], 0.99) * 1e3:.0f} "
            f"(n={len(r['mttr'])}) | {r['rss_dped_sum']:.0f} / {r['rss_dped_max']:.0f} | "
            f"{r['rss_cped']:.0f} | {r['rss_broker']:.0f} | {r['rss_sim']:.0f} "
            f"({r['sim_cores']:.2f} cores) | {'yes' if holds else 'no'} |")


HEADER = ("| N | D | boot s | beats/s | dped ms/beat (mean / max) | cped ms/beat | broker "
          "ms/beat | false failures | detection s p50 / p99 | MTTR ms p50 / p99 | RSS MiB "
          "dpeds (sum / max) | cped | broker | simulator | holds |\n"
          "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | "
          "--- | --- |")


def _terminate(*_) -> None:
    """The first SIGTERM ends the run through its clean-up; a second one (``timeout`` and a
    ``pkill`` both send one) must not cut that clean-up short."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sys.exit(1)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", default="100x1,1000x10,5000x50",
                   help="comma-separated NxD: N assemblies over D deployables")
    p.add_argument("--window", type=float, default=60.0,
                   help="seconds of heartbeats only, for the CPU figures")
    p.add_argument("--fault-window", type=float, default=30.0,
                   help="seconds of simulated deaths and failures after that")
    p.add_argument("--death-every", type=float, default=5.0,
                   help="seconds between simulated assembly deaths")
    p.add_argument("--fail-every", type=float, default=2.0,
                   help="seconds between simulated resource failures")
    p.add_argument("--boot-timeout", type=float, default=900.0,
                   help="seconds for every deployable to reach running")
    p.add_argument("--shard-size", type=int, default=250,
                   help="simulated agents per simulator process")
    p.add_argument("--keep", action="store_true", help="keep the work dirs")
    p.add_argument("--shard", metavar="HOST", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.shard:
        return shard_main(args.shard)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    signal.signal(signal.SIGTERM, _terminate)                  # clean up as on Ctrl-C
    print(f"uptime: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} "
          f"{os.getloadavg()[2]:.2f}; interval {INTERVAL:g} s x {MISSES} misses", flush=True)
    print(HEADER, flush=True)
    largest = 0
    for spec in args.runs.split(","):
        n, d = (int(x) for x in spec.lower().split("x"))
        run = Run(n, d, args)
        try:
            boot = run.start()
            result = run.measure()
        except Exception as exc:
            print(f"| {n} | {d} | failed: {exc} |", flush=True)
            continue
        finally:
            run.close()
        print(row(result, boot), flush=True)
        for line in result["false"][:5]:
            print(f"  false failure: {line}", flush=True)
        if not result["false"] and result["late"] == 0 and result["detect"] and pct(
                result["detect"], 0.99) <= result["target"]:
            largest = max(largest, n)
        print(f"  load {os.getloadavg()[0]:.2f}; dpeds {result['dped_cores']:.2f} cores; "
              f"late beats {result['late']}; deaths {result['deaths']}, failures "
              f"{result['fails']}", flush=True)
    print(f"largest N that holds: {largest or 'none'}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
