"""Chaos soak: random faults against a whole pcloud system, with its invariants checked.

Starts a private RabbitMQ node (its own state dir, ports and node name, never the machine's
broker), a ``cped`` on a private state dir, and a few ``process`` deployables whose assemblies
depend on each other (``db:store`` before ``app:api``; ``app:cache`` depends on nothing). Then,
for ``--duration`` seconds, it injects one fault at a time, drawn at random from a shuffled
bag of every fault type, waits until every deployable answers ``running`` again, and checks:

- no deployable lost: every deployable is listed and comes back to ``running`` (its DPE
  answering) within ``--recovery-timeout`` seconds of each fault;
- never two copies: at most one guest agent per assembly and one process per resource, at
  every sample of ``/proc`` (every 0.25 s, in a thread of its own);
- every live event stored once: per deployable the stored ``seq`` run has no gap and no
  duplicate, and every event received live on ``pcloud.event.#`` is stored with its seq;
- no healthy resource restarted: a resource's host pid changes only when a fault hit it,
  its assembly, or something it depends on (transitively); a change between faults, or one
  outside that set, is reported with the fault in effect;
- the right number of cped and dped processes: never more than one cped or one dped per
  deployable, and exactly one of each once recovered;
- nothing left behind: after the deployables are stopped, cped ended and the broker stopped,
  no process names the soak's work dir (command line or environment) or runs a soak resource.

Faults: resource SIGKILL, sandbox SIGKILL (its whole process group: the assembly's power
cut), dped SIGKILL, dped SIGSTOP for 1-20 s then SIGCONT, cped SIGKILL (restarted at once, as
systemd would), broker SIGKILL then start again, broker frozen (SIGSTOP) for 2-12 s.

Prints faults by type, each invariant's result, recovery time per fault type (from the fault,
or for pauses and freezes from the resume) and for the broker faults the time from the
broker coming back (start returned, or thaw) to every deployable answering ``running``.
Exit status 1 when an invariant failed, 2 when the soak could not run.

Run: ``.venv/bin/python bench/chaos.py --duration 600 [--seed N] [--deployables 3]``
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from contextlib import suppress
from pathlib import Path

from lxml import etree

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pcloud import broker  # noqa: E402
from pcloud.bus import Bus, BusError, MethodError  # noqa: E402

BIN = Path(sys.executable).parent
ASSEMBLIES = {"db": ["store"], "app": ["api", "cache"]}
DEPENDENCIES = [("db:store", "app:api")]          # first, then
FAULTS = ["resource_kill", "sandbox_kill", "dped_kill", "dped_stop", "cped_kill",
          "broker_kill", "broker_freeze"]
INVARIANTS = {
    "lost": "no deployable lost",
    "copies": "never two copies of an assembly or of a resource",
    "events": "every live event stored once, with no seq gap",
    "healthy": "no healthy resource restarted",
    "daemons": "the right number of cped and dped processes",
    "leftovers": "nothing left behind",
}
CALL_TIMEOUT = 3.0
SETTLE = 1.5          # seconds after a recovery before the resources' pids are compared


def now() -> float:
    return time.monotonic()


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(
            errors="replace")
    except OSError:
        return ""


def zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


def figures(values: list[float]) -> str:
    if not values:
        return "n=0"
    return (f"median {statistics.median(values):6.2f} s  max {max(values):6.2f} s  "
            f"n={len(values)}")


class Soak:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.rng = random.Random(args.seed)
        self.work = Path(tempfile.mkdtemp(prefix="pcloud-chaos-"))
        self.state = self.work / "state"
        self.broker_dir = self.work / "broker"
        self.ports = (broker.free_port(), broker.free_port(), broker.free_port())
        self.url = ""
        self.tag = f"7{self.rng.randrange(100000, 999999)}"
        self.names = [f"chaos{i}" for i in range(args.deployables)]
        self.resources = [(d, a, s) for d in self.names for a, svcs in ASSEMBLIES.items()
                          for s in svcs]
        self.sleep_arg = {key: f"{self.tag}{i:02d}" for i, key in enumerate(self.resources)}
        self.cped: subprocess.Popen | None = None
        self.client: Bus | None = None
        self.watch: Bus | None = None
        self.live: list[tuple[float, dict]] = []
        self.live_lock = threading.Lock()
        self.violations: dict[str, list[str]] = defaultdict(list)
        self.seen_violation: set[str] = set()
        self.faults: Counter[str] = Counter()
        self.recovery: dict[str, list[float]] = defaultdict(list)
        self.broker_start: list[float] = []
        self.broker_back: dict[str, list[float]] = defaultdict(list)
        self.timeline: list[tuple[float, str, str, set]] = []   # (t, type, what, targets)
        self.current = "start-up"
        self.stop_monitor = threading.Event()
        self.monitor: threading.Thread | None = None
        self.event_counts: dict[str, tuple[int, int]] = {}
        self.started = self.elapsed = 0.0
        self.replaced = 0   # paused dpeds that cped killed and replaced during the pause
        self.replaced_after: list[float] = []   # SIGSTOP -> its replacement running
        self.slowest: dict[str, tuple[float, str]] = {}
        self.why = ""   # what healthy() last found missing
        self.t0 = now()

    # ---- bookkeeping ---------------------------------------------------------------

    def violate(self, key: str, text: str, once: str | None = None) -> None:
        if once is not None:
            if once in self.seen_violation:
                return
            self.seen_violation.add(once)
        line = f"[{now() - self.t0:7.1f} s, during {self.current}] {text}"
        self.violations[key].append(line)
        print(f"  VIOLATION ({INVARIANTS[key]}): {line}", flush=True)

    def log(self, text: str) -> None:
        if self.args.verbose:
            wall = time.time()   # the daemons' log lines carry the same clock (PCLOUD_LOG_TIME)
            clock = time.strftime("%H:%M:%S", time.localtime(wall)) + f".{wall % 1:.3f}"[2:]
            print(f"[{now() - self.t0:7.1f} s {clock}] {text}", flush=True)

    # ---- processes -----------------------------------------------------------------

    def scan(self) -> dict[int, str]:
        """Live processes of this soak: command lines naming the work dir or a resource."""
        found = {}
        work, tag = str(self.work), f"sleep {self.tag}"
        me = os.getpid()
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) == me:
                continue
            line = cmdline(int(entry))
            if (work in line or tag in line) and not zombie(int(entry)):
                found[int(entry)] = line
        return found

    def resource_pids(self, procs: dict[int, str] | None = None) -> dict[tuple, list[int]]:
        procs = self.scan() if procs is None else procs
        out: dict[tuple, list[int]] = {key: [] for key in self.resources}
        needles = {f"sleep {arg}": key for key, arg in self.sleep_arg.items()}
        for pid, line in procs.items():
            for needle, key in needles.items():
                if line.startswith(needle) or f" {needle}" in f" {line}":
                    out[key].append(pid)
        return out

    def agent_pids(self, procs: dict[int, str], dep: str, asm: str) -> list[int]:
        needle = f"--deployable {dep} --assembly {asm} "
        return [p for p, line in procs.items() if "pcloud-agent" in line and needle in line
                and not line.startswith("unshare")]

    def dped_pids(self, procs: dict[int, str], dep: str) -> list[int]:
        marker = f"/dpe/{dep}/deployable.xml"
        return [p for p, line in procs.items() if "dped" in line and marker in line]

    def cped_pids(self, procs: dict[int, str]) -> list[int]:
        return [p for p, line in procs.items()
                if "cped" in line and f"--state-dir {self.state}" in line]

    def dped_pid(self, dep: str) -> int | None:
        pids = self.dped_pids(self.scan(), dep)
        return pids[0] if len(pids) == 1 else None

    def sandbox_pid(self, dep: str, asm: str) -> int | None:
        try:
            info = json.loads((self.state / "dpe" / dep / "assemblies" / asm /
                               "sandbox.pid").read_text())
            pid = int(info["pid"])
        except (OSError, ValueError, KeyError):
            return None
        return pid if not zombie(pid) and str(self.work) in cmdline(pid) else None

    def _monitor(self) -> None:
        """Copies of agents, resources and daemons, sampled until stopped."""
        while not self.stop_monitor.wait(0.25):
            procs = self.scan()
            for key, pids in self.resource_pids(procs).items():
                if len(pids) > 1:
                    self.violate("copies", f"resource {'/'.join(key)} runs {len(pids)} times "
                                 f"(pids {pids})", once=f"r{key}{sorted(pids)}")
            for dep in self.names:
                for asm in ASSEMBLIES:
                    pids = self.agent_pids(procs, dep, asm)
                    if len(pids) > 1:
                        self.violate("copies", f"assembly {dep}/{asm} has {len(pids)} guest "
                                     f"agents (pids {pids})", once=f"a{dep}{asm}{sorted(pids)}")
                pids = self.dped_pids(procs, dep)
                if len(pids) > 1:
                    self.violate("daemons", f"{len(pids)} dped processes for {dep} (pids "
                                 f"{pids})", once=f"d{dep}{sorted(pids)}")
            pids = self.cped_pids(procs)
            if len(pids) > 1:
                self.violate("daemons", f"{len(pids)} cped processes (pids {pids})",
                             once=f"c{sorted(pids)}")

    # ---- bus -----------------------------------------------------------------------

    def connect(self) -> None:
        """A fresh client (after a broker fault: no back-off of ours in the figures)."""
        if self.client is not None:
            old, self.client = self.client, None
            threading.Thread(target=old.close, daemon=True).start()
        deadline = now() + 60
        while True:
            try:
                self.client = Bus(url=self.url, name="chaos").start(timeout=10)
                return
            except BusError:
                if now() > deadline:
                    raise
                time.sleep(0.2)

    def call(self, method: str, body: str, timeout: float = CALL_TIMEOUT):
        assert self.client is not None
        return self.client.call("pcloud.cpe", method, body, timeout=timeout)

    def _on_event(self, msg) -> None:
        try:
            body = msg.body
            event = etree.fromstring(body.encode() if isinstance(body, str) else bytes(body))
        except Exception:
            return
        with self.live_lock:
            self.live.append((now(), dict(event.attrib)))

    def status(self, dep: str) -> tuple[str, str | None]:
        try:
            result = self.call("deployable_status", f'<deployable name="{dep}"/>')
        except MethodError as exc:
            return f"error:{exc.code}", exc.message
        except BusError as exc:
            return "no answer", str(exc)
        return result.get("state", "?"), result.get("reason")

    # ---- start and stop ------------------------------------------------------------

    def start_broker(self) -> float:
        t = now()
        port, dist, epmd = self.ports
        self.url = broker.start(self.broker_dir, port=port, dist_port=dist, epmd_port=epmd)
        return now() - t

    def start_cped(self) -> None:
        self.state.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, PCLOUD_BROKER_URL=self.url, PCLOUD_STATE_DIR=str(self.state),
                   PCLOUD_BROKER_ADMIN=str(self.broker_dir), PCLOUD_LOG_TIME="1")
        with open(self.work / "cped.log", "ab") as log:
            self.cped = subprocess.Popen(
                [str(BIN / "cped"), "--foreground", "--state-dir", str(self.state)],
                stdout=log, stderr=log, env=env, stdin=subprocess.DEVNULL)

    def wait_cped(self, timeout: float = 60) -> None:
        deadline = now() + timeout
        while now() < deadline:
            if self.cped is not None and self.cped.poll() is not None:
                raise RuntimeError(f"cped exited {self.cped.returncode}; see "
                                   f"{self.work / 'cped.log'}")
            try:
                self.call("deployables_list", "<deployables/>")
                return
            except BusError:
                time.sleep(0.2)
        raise RuntimeError("cped does not answer deployables_list")

    def document(self, dep: str) -> str:
        parts = [f'<deployable name="{dep}" infrastructure="process"><assemblies>']
        for asm, svcs in ASSEMBLIES.items():
            parts.append(f'<assembly name="{asm}" heartbeat_interval="1" '
                         'heartbeat_misses="3"><services>')
            for svc in svcs:
                parts.append(f'<service name="{svc}" class="process" monitor_interval="2">'
                             '<parameters><parameter name="command" value="sleep '
                             f'{self.sleep_arg[(dep, asm, svc)]}"/></parameters></service>')
            parts.append("</services></assembly>")
        parts.append("</assemblies><constraints>")
        for i, (first, then) in enumerate(DEPENDENCIES):
            parts.append(f'<service_dependency id="dep{i}" first="{first}" then="{then}"/>')
        parts.append("</constraints></deployable>")
        return "".join(parts)

    def setup(self) -> None:
        took = self.start_broker()
        print(f"private broker {self.url.split('@')[-1]} (node in {self.broker_dir}) "
              f"started in {took:.1f} s", flush=True)
        self.connect()
        self.watch = Bus(url=self.url, name="chaos-events").start(timeout=30)
        self.watch.subscribe("pcloud.event.#", self._on_event).wait_attached(10)
        self.start_cped()
        self.wait_cped()
        for dep in self.names:
            self.call("deployable_start", self.document(dep), timeout=15)
        took = self.wait_recovered(lambda: True, timeout=180)
        if took is None:
            raise RuntimeError("the deployables never all reached running")
        print(f"{len(self.names)} deployables running after {took:.1f} s "
              f"(assemblies {ASSEMBLIES}, {DEPENDENCIES[0][0]} before {DEPENDENCIES[0][1]})",
              flush=True)
        self.monitor = threading.Thread(target=self._monitor, daemon=True)
        self.monitor.start()

    def teardown(self) -> None:
        self.current = "teardown"
        self.stop_monitor.set()
        if self.monitor is not None:
            self.monitor.join(5)
        stopped = False
        if self.cped is not None and self.cped.poll() is None and self.client is not None:
            with suppress(BusError, MethodError):
                for dep in self.names:
                    self.call("deployable_stop", f'<deployable name="{dep}"/>', timeout=15)
                deadline = now() + 90
                while now() < deadline and not stopped:
                    with suppress(BusError, MethodError):
                        listing = self.call("deployables_list", "<deployables/>")
                        stopped = all(d.get("state") == "stopped" for d in listing)
                    time.sleep(0.3)
            if not stopped:
                self.violate("lost", "the deployables did not all stop within 90 s")
            self.check_events()
        if self.cped is not None and self.cped.poll() is None:
            self.cped.terminate()
            try:
                self.cped.wait(20)
            except subprocess.TimeoutExpired:
                self.violate("leftovers", "cped did not end within 20 s of SIGTERM")
                self.cped.kill()
        for bus in (self.client, self.watch):
            if bus is not None:
                bus.close()
        broker.stop(self.broker_dir)
        time.sleep(1.0)
        left = self.leftovers()
        for pid, line in left.items():
            self.violate("leftovers", f"pid {pid} still runs: {line[:200]}")
            with suppress(OSError):
                os.kill(pid, signal.SIGKILL)

    def leftovers(self) -> dict[int, str]:
        procs = self.scan()
        marker = str(self.work).encode()
        for entry in os.listdir("/proc"):
            if entry.isdigit() and int(entry) != os.getpid() and int(entry) not in procs:
                with suppress(OSError):
                    if marker in Path(f"/proc/{entry}/environ").read_bytes() \
                            and not zombie(int(entry)):
                        procs[int(entry)] = cmdline(int(entry))
        return procs

    # ---- recovery ------------------------------------------------------------------

    def healthy(self) -> bool:
        """Every deployable running with its DPE answering, every resource once, one cped
        and one dped per deployable."""
        procs = self.scan()
        bad = ["/".join(k) for k, p in self.resource_pids(procs).items() if len(p) != 1]
        if bad:
            self.why = f"resources not running once: {bad}"
            return False
        if len(self.cped_pids(procs)) != 1 or any(len(self.dped_pids(procs, d)) != 1
                                                  for d in self.names):
            self.why = "not one cped and one dped per deployable"
            return False
        for dep in self.names:
            state, reason = self.status(dep)
            if state != "running" or reason:
                self.why = f"{dep} {state}" + (f" ({reason[:100]})" if reason else "")
                return False
        return True

    def wait_recovered(self, done, timeout: float | None = None) -> float | None:
        """Seconds until ``done()`` and ``healthy()``; None (and a violation) past the
        deadline, after which it waits as long again before giving up."""
        timeout = timeout or self.args.recovery_timeout
        start = now()
        reported = False
        while True:
            if done() and self.healthy():
                return now() - start
            if now() - start > timeout and not reported:
                reported = True
                procs = self.scan()
                detail = {d: self.status(d) for d in self.names}
                bad = {"/".join(k): v for k, v in self.resource_pids(procs).items()
                       if len(v) != 1}
                self.violate("lost", f"not recovered {timeout:.0f} s after the fault: "
                             f"status {detail}; resources not running once {bad}; cped "
                             f"{self.cped_pids(procs)}; dped "
                             f"{ {d: self.dped_pids(procs, d) for d in self.names} }")
            if now() - start > 2 * timeout:
                return None
            time.sleep(0.05)

    def dependents(self, dep: str, assemblies: set[str], resources: set[str]) -> set[tuple]:
        """Resources that may restart: the hit ones and all that depend on them."""
        hit = {f"{a}:{s}" for a, svcs in ASSEMBLIES.items() for s in svcs
               if a in assemblies or f"{a}:{s}" in resources}
        grew = True
        while grew:
            grew = False
            for first, then in DEPENDENCIES:
                if first in hit and then not in hit:
                    hit.add(then)
                    grew = True
        return {(dep, *r.split(":")) for r in hit}

    # ---- faults --------------------------------------------------------------------

    def pick(self) -> tuple[str, str, str]:
        return self.rng.choice(self.resources)

    def fault_resource_kill(self) -> tuple[str, set, object, float]:
        key = self.pick()
        pids = self.resource_pids()[key]
        os.kill(pids[0], signal.SIGKILL)
        t = now()
        dep, asm, svc = key
        return (f"SIGKILL resource {'/'.join(key)} (pid {pids[0]})",
                self.dependents(dep, set(), {f"{asm}:{svc}"}),
                lambda: self.resource_pids()[key] not in ([], pids), t)

    def fault_sandbox_kill(self) -> tuple[str, set, object, float]:
        dep, asm, _ = self.pick()
        pid = self.sandbox_pid(dep, asm)
        old = {k: v for k, v in self.resource_pids().items() if k[:2] == (dep, asm)}
        os.killpg(pid, signal.SIGKILL)
        t = now()
        return (f"SIGKILL sandbox {dep}/{asm} (process group {pid})",
                self.dependents(dep, {asm}, set()),
                lambda: all(self.resource_pids()[k] not in ([], v) for k, v in old.items()), t)

    def fault_dped_kill(self) -> tuple[str, set, object, float]:
        dep = self.rng.choice(self.names)
        pid = self.dped_pid(dep)
        os.kill(pid, signal.SIGKILL)
        t = now()
        return (f"SIGKILL dped of {dep} (pid {pid})", set(),
                lambda: self.dped_pid(dep) not in (None, pid), t)

    def fault_dped_stop(self) -> tuple[str, set, object, float]:
        dep = self.rng.choice(self.names)
        pid = self.dped_pid(dep)
        pause = self.rng.uniform(1, 20)
        os.kill(pid, signal.SIGSTOP)
        stopped = now()
        while now() - stopped < pause:   # cped may replace a silent DPE: how soon, if so
            if self.dped_pid(dep) not in (None, pid) and self.healthy():
                self.replaced_after.append(now() - stopped)
                time.sleep(max(0.0, pause - (now() - stopped)))
                break
            time.sleep(0.1)
        replaced = self.dped_pid(dep) != pid
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)
        what = f"SIGSTOP dped of {dep} (pid {pid}) for {pause:.1f} s"
        if replaced:
            what += " (cped replaced it during the pause)"
            self.replaced += 1
        return what, set(), lambda: True, now()

    def fault_cped_kill(self) -> tuple[str, set, object, float]:
        pid = self.cped.pid
        self.cped.kill()
        t = now()
        self.cped.wait(10)
        self.start_cped()
        return f"SIGKILL cped (pid {pid}), started again", set(), lambda: True, t

    def fault_broker_kill(self) -> tuple[str, set, object, float]:
        broker.kill9(self.broker_dir)
        took = self.start_broker()
        self.broker_start.append(took)
        back = now()
        self.connect()
        return f"SIGKILL broker, started again in {took:.1f} s", set(), lambda: True, back

    def fault_broker_freeze(self) -> tuple[str, set, object, float]:
        pause = self.rng.uniform(2, 12)
        pids = broker.node_pids(self.broker_dir)
        for pid in pids:
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)
        try:
            time.sleep(pause)
        finally:
            for pid in pids:
                with suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)
        back = now()
        self.connect()
        return f"broker frozen (SIGSTOP) for {pause:.1f} s", set(), lambda: True, back

    def inject(self, kind: str, previous: dict[tuple, list[int]]) -> bool:
        before = self.resource_pids()
        for key, pids in before.items():
            if pids != previous.get(key, pids):
                self.violate("healthy", f"{'/'.join(key)} restarted (pids {previous[key]} -> "
                             f"{pids}) with no fault injected since the last recovery; its "
                             f"DPE's log: {self.dpe_says(key)}")
        self.current = kind
        injected = now()
        what, allowed, done, measured_from = getattr(self, f"fault_{kind}")()
        self.current = f"{kind}: {what}"
        self.faults[kind] += 1
        self.timeline.append((injected, kind, what, {(d, a) for d, a, _ in allowed}))
        self.log(f"fault {what}")
        self.why = ""
        took = self.wait_recovered(done)
        if took is None:
            return False
        total = now() - measured_from
        self.recovery[kind].append(total)
        last = f"; last wait: {self.why}" if self.why else ""
        self.slowest[kind] = max(self.slowest.get(kind, (0.0, "")), (total, what + last))
        if kind.startswith("broker"):
            self.broker_back[kind].append(total)
        self.log(f"  recovered in {total:.2f} s")
        time.sleep(SETTLE)
        after = self.resource_pids()
        for key, pids in after.items():
            if pids != before[key] and key not in allowed:
                self.violate("healthy", f"{'/'.join(key)} restarted (pids {before[key]} -> "
                             f"{pids}) though the fault did not touch it or what it depends "
                             f"on; its DPE's log: {self.dpe_says(key)}")
        previous.clear()
        previous.update(after)
        return True

    def dpe_says(self, key: tuple) -> list[str]:
        """The last lines of the deployable's dped log about this resource or adoption."""
        dep, asm, svc = key
        try:
            lines = (self.state / "dpe" / dep / "dped.log").read_text(errors="replace")
        except OSError:
            return []
        wanted = (f"resource {asm}/{svc}: ", "adopting", "connected to")
        found = [line.split("]: ", 1)[-1] for line in lines.splitlines()
                 if any(w in line for w in wanted)]
        return found[-6:]

    def run(self) -> None:
        self.setup()
        self.started = now()
        deadline = self.started + self.args.duration
        previous = self.resource_pids()
        bag: list[str] = []
        while now() < deadline:
            if not bag:
                bag = list(self.args.faults)
                self.rng.shuffle(bag)
            if not self.inject(bag.pop(), previous):
                print("  a deployable did not recover: no more faults", flush=True)
                break
            time.sleep(self.rng.uniform(0.5, 3.0))
        self.current = "the end"
        self.elapsed = now() - self.started
        final = self.resource_pids()
        for key, pids in final.items():
            if pids != previous.get(key, pids):
                self.violate("healthy", f"{'/'.join(key)} restarted (pids {previous[key]} -> "
                             f"{pids}) after the last recovery")

    # ---- events --------------------------------------------------------------------

    def stored(self, dep: str) -> list[dict]:
        events: list[dict] = []
        since = 0
        while True:
            page = self.call("events_query", f'<events deployable="{dep}" since_seq="{since}" '
                             'limit="1000"/>', timeout=15)
            batch = [dict(e.attrib) for e in page]
            events += batch
            if len(batch) < 1000:
                return events
            since = int(batch[-1]["seq"])

    def check_events(self) -> None:
        time.sleep(1.0)   # the last live events
        fields = ("type", "assembly", "resource", "state")
        with self.live_lock:
            live = [e for _, e in self.live]
        for dep in self.names:
            try:
                stored = self.stored(dep)
            except (BusError, MethodError) as exc:
                self.violate("events", f"events_query for {dep} failed: {exc}")
                continue
            seqs = [int(e["seq"]) for e in stored]
            counts = Counter(seqs)
            dups = sorted(s for s, n in counts.items() if n > 1)
            if dups:
                self.violate("events", f"{dep}: seq stored more than once: {dups[:20]}")
            distinct = sorted(counts)
            gaps = [(a, b) for a, b in zip(distinct, distinct[1:], strict=False) if b != a + 1]
            if distinct and distinct[0] != 1:
                gaps.insert(0, (0, distinct[0]))
            if gaps:
                self.violate("events", f"{dep}: seq gaps (after, next) {gaps[:20]}")
            by_seq = {int(e["seq"]): e for e in stored}
            missing, differ = [], []
            for event in live:
                if event.get("deployable") != dep or "seq" not in event:
                    continue
                seq = int(event["seq"])
                if seq not in by_seq:
                    missing.append(seq)
                elif any(by_seq[seq].get(f) != event.get(f) for f in fields):
                    differ.append((seq, {f: event.get(f) for f in fields},
                                   {f: by_seq[seq].get(f) for f in fields}))
            if missing:
                self.violate("events", f"{dep}: live events not stored: seq "
                             f"{sorted(set(missing))[:20]}")
            if differ:
                self.violate("events", f"{dep}: a stored event differs from the live one with "
                             f"its seq: {differ[:5]}")
            self.event_counts[dep] = (len(stored), len([e for e in live
                                                        if e.get("deployable") == dep]))

    # ---- report --------------------------------------------------------------------

    def notable(self) -> list[str]:
        """Fencing, failed assemblies and degraded deployables not explained by a fault
        on that assembly (reported, not counted: a restart they caused is)."""
        lines = []
        with self.live_lock:
            live = list(self.live)
        for t, event in live:
            kind = event.get("type")
            interesting = kind == "fencing" or (
                kind == "assembly_state_change" and event.get("state") == "failed") or (
                kind == "deployable_state_change" and event.get("state") == "degraded")
            if not interesting:
                continue
            fault = next((f for f in reversed(self.timeline) if f[0] <= t), None)
            where = (event.get("deployable"), event.get("assembly"))
            if fault is not None and fault[1].startswith("broker") \
                    and kind == "deployable_state_change":
                continue   # a mass loss of heartbeats, nothing fenced: expected
            hit = fault is not None and fault[1] in ("resource_kill", "sandbox_kill")
            if hit and fault[1] == "sandbox_kill" and where in fault[3]:
                continue   # the killed assembly's own loss
            if hit and kind == "deployable_state_change" \
                    and any(d == where[0] for d, _ in fault[3]):
                continue   # its deployable degraded while it recovers
            lines.append(f"[{t - self.t0:7.1f} s] {kind} {event.get('deployable')}/"
                         f"{event.get('assembly', '-')} {event.get('state', '')} "
                         f"reason={event.get('reason', '')[:120]!r}  "
                         f"(last fault: {fault[2] if fault else 'none'})")
        return lines

    def report(self, keep: bool) -> int:
        print()
        print(f"chaos soak: {self.elapsed:.0f} s of faults, seed {self.args.seed}, "
              f"{len(self.names)} deployables x {len(ASSEMBLIES)} assemblies "
              f"({sum(len(s) for s in ASSEMBLIES.values())} resources each)")
        print(f"\nfaults by type ({sum(self.faults.values())} in all):")
        for kind in FAULTS:
            print(f"  {kind:<15} {self.faults[kind]:4d}" + (
                f"  ({self.replaced} replaced by cped during the pause)"
                if kind == "dped_stop" and self.replaced else ""))
        print("\nrecovery time per fault type (to every deployable running, its DPE "
              "answering, every resource once;\n  dped_stop and broker_freeze from the "
              "resume, broker_kill from the start returning):")
        for kind in FAULTS:
            print(f"  {kind:<15} {figures(self.recovery[kind])}")
        print("  slowest:")
        for kind in FAULTS:
            if kind in self.slowest:
                took, what = self.slowest[kind]
                print(f"    {kind:<15} {took:6.2f} s  {what}")
        if self.replaced_after:
            print(f"  dped_stop, replaced during the pause: SIGSTOP -> the new dped running: "
                  f"{figures(self.replaced_after)}")
        print("\nbroker back -> every deployable answering running:")
        both = self.broker_back["broker_kill"] + self.broker_back["broker_freeze"]
        print(f"  all broker faults    {figures(both)}")
        print(f"  broker_kill: start   {figures(self.broker_start)}")
        print(f"  broker_kill: running {figures(self.broker_back['broker_kill'])}")
        total = [a + b for a, b in zip(self.broker_start, self.broker_back["broker_kill"],
                                       strict=False)]
        print(f"  broker_kill: total   {figures(total)}  (SIGKILL -> every deployable running)")
        print(f"  broker_freeze: thaw  {figures(self.broker_back['broker_freeze'])}")
        if self.event_counts:
            print("\nevents (stored, received live): " + ", ".join(
                f"{d} {s}/{n}" for d, (s, n) in self.event_counts.items()))
        print("\ninvariants:")
        failed = 0
        for key, text in INVARIANTS.items():
            found = self.violations.get(key, [])
            failed += bool(found)
            print(f"  {'FAIL' if found else 'ok  '} {text}" +
                  (f" ({len(found)} violations)" if found else ""))
            for line in found[:15]:
                print(f"         {line}")
            if len(found) > 15:
                print(f"         ... and {len(found) - 15} more")
        notable = self.notable()
        if notable:
            print(f"\nnotable events (not counted; {len(notable)}):")
            for line in notable[:20]:
                print(f"  {line}")
        print(f"\n{'ALL INVARIANTS HELD' if not failed else f'{failed} INVARIANT(S) FAILED'}"
              f" (work dir {self.work}{', kept' if failed or keep else ', removed'})",
              flush=True)
        return 1 if failed else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=600.0, help="seconds of faults")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--deployables", type=int, default=3)
    parser.add_argument("--recovery-timeout", type=float, default=90.0)
    parser.add_argument("--keep", action="store_true", help="keep the work dir (logs)")
    parser.add_argument("-v", "--verbose", action="store_true", help="print every fault")
    parser.add_argument("--faults", default=",".join(FAULTS),
                        help="comma-separated fault types to draw from (default: all)")
    args = parser.parse_args()
    args.faults = [f.strip() for f in args.faults.split(",") if f.strip()]
    unknown = set(args.faults) - set(FAULTS)
    if unknown or not args.faults:
        parser.error(f"unknown fault types {sorted(unknown)}; choose from {FAULTS}")
    if args.seed is None:
        args.seed = random.randrange(1 << 30)
    if not args.verbose:   # the bus's reconnect notices of the soak's own clients
        logging.getLogger("pcloud").setLevel(logging.ERROR)
    soak = Soak(args)
    print(f"chaos soak: seed {args.seed}, work dir {soak.work}", flush=True)
    status = 2
    try:
        soak.run()
        status = 0
    except KeyboardInterrupt:
        print("interrupted", flush=True)
    except Exception as exc:  # the report still says what was seen
        print(f"the soak stopped: {type(exc).__name__}: {exc}", flush=True)
    if not soak.elapsed and soak.started:
        soak.elapsed = now() - soak.started
    try:
        soak.teardown()
    except Exception as exc:
        print(f"teardown failed: {type(exc).__name__}: {exc}", flush=True)
        status = 2
        with suppress(Exception):
            broker.stop(soak.broker_dir)
        for pid in soak.leftovers():
            with suppress(OSError):
                os.kill(pid, signal.SIGKILL)
    keep = args.keep or status != 0 or any(soak.violations.values())
    result = soak.report(keep)
    if not keep:
        shutil.rmtree(soak.work, ignore_errors=True)
    return max(result, status) if status != 2 else 2


if __name__ == "__main__":
    sys.exit(main())
