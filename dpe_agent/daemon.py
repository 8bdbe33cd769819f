"""The DPE daemon: keeps one deployable alive.

One main-loop thread owns all state. Bus callbacks (agent heartbeats and reports, method
requests, reconnects), signal handlers and pool threads finishing actions only put items on
its queue. Each loop turn handles every queued item, runs the timers (heartbeat deadlines,
back-off holds, the DPE's own heartbeat), then *converges*: boot assemblies that should be up
and are not, compute a transition graph from the CIB, and launch what the graph allows on a
thread pool. A failure report or a failed action aborts the running graph; once its running
actions finished, a new graph is computed from what is now known.

State changes go through :meth:`Dpe.change_state`, which checks the lifecycle tables of
:mod:`pcloud.states`, stores the state and emits the event. Policy (escalation, heartbeats,
incident timing, the transition computer) lives in pure modules; this module is the shell.
"""

from __future__ import annotations

import logging
import os
import queue
import signal
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from lxml import etree

from dpe_agent.cib import build_cib, rsc_id, split_rsc_id
from dpe_agent.drivers import AssemblySpec, DriverError, PowerState, get_driver
from dpe_agent.engines import get_engine
from dpe_agent.escalation import Decision, EscalationPolicy, Level, Thresholds
from dpe_agent.executor import ActionResult, ActionRunner, GraphRun
from dpe_agent.graph import Action
from dpe_agent.heartbeats import BeatKind, HeartbeatTracker
from dpe_agent.incidents import IncidentTracker, iso
from dpe_agent.observed import AssemblyStatus, ObservedState
from dpe_agent.store import DpeStore
from pcloud import xmlsafe
from pcloud.bus import Bus, Message, MethodError
from pcloud.deployable import Deployable, diff
from pcloud.events import Event, EventType
from pcloud.states import AssemblyState as A
from pcloud.states import DeployableState as D
from pcloud.states import ResourceState as R
from pcloud.states import TransitionError, check_transition

log = logging.getLogger("dped")

DPE_HEARTBEAT_INTERVAL = 1.0
RECONNECT_GRACE = 5.0
ADOPT_TIMEOUT = 10.0
STOP_TIMEOUT = 20.0
MAX_IDLE_COMPUTES = 25


def dpe_dir(state_dir: Path, deployable: str) -> Path:
    return Path(state_dir) / "dpe" / deployable


def _thresholds(failures: int | None, period: float | None) -> Thresholds:
    return Thresholds(failures, period) if failures and period else Thresholds()


def policy_for(dep: Deployable) -> EscalationPolicy:
    return EscalationPolicy(
        deployable=_thresholds(dep.escalation_failures, dep.escalation_period),
        assemblies={a.name: _thresholds(a.escalation_failures, a.escalation_period)
                    for a in dep.assemblies},
        resources={(a.name, s.name): _thresholds(s.escalation_failures, s.escalation_period)
                   for a, s in dep.services()})


class Dpe:
    """The runtime of one deployable's DPE (see the module docstring)."""

    def __init__(self, deployable: Deployable, state_dir: Path, *, engine: str = "native",
                 bus: Bus | None = None, driver: Any = None, broker_url: str | None = None,
                 handle_signals: bool = False) -> None:
        self.dir = dpe_dir(state_dir, deployable.name)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.store = DpeStore(self.dir / "dpe.sqlite")
        saved = self.store.get("deployable_xml")
        if saved:
            deployable = deployable.adopt_uuids(Deployable.from_xml(saved))
        self.dep = deployable
        self.name = deployable.name
        self.store.set("deployable_xml", deployable.to_xml())
        self.engine = _engine(engine)
        self.bus = bus or Bus(url=broker_url, name=f"dped-{self.name}")
        self.broker_url = self.bus.url
        self.driver = driver or get_driver(deployable.infrastructure)
        self.handle_signals = handle_signals
        self.observed = ObservedState()
        self.tracker = HeartbeatTracker()
        self.policy = policy_for(deployable)
        self.policy.restore(self.store.load_json("escalation", {}))
        self.incidents = IncidentTracker()
        self.states: dict[tuple[str, ...], str] = {}
        self.violations: list[str] = []          # lifecycle violations (tests assert none)
        self.reasons: dict[tuple[str, ...], str] = {}
        self.fail_counts: dict[tuple[str, ...], int] = self._load_fail_counts()
        self.queue: queue.Queue[tuple] = queue.Queue()
        self.pool = ThreadPoolExecutor(max_workers=16, thread_name_prefix="dpe-action")
        self.runner = ActionRunner(self.bus, self.name, self.driver, self.spec,
                                   self._node_of_uuid, self._service)
        self.run: GraphRun | None = None
        self.transition_id = 0
        self.busy: dict[str, str] = {}           # assembly -> driver operation in flight
        self.awaiting: set[str] = set()          # sandbox up (booted or adopted), no beat yet
        self.holds: dict[tuple[str, ...], float] = {}   # back-off: key -> monotonic due
        self.dirty = True
        self.idle_computes = 0
        self.recheck_at: float | None = None
        self.stopping = False
        self.gave_up = False
        self.exit_code: int | None = None
        self.started = iso(time.time())
        self.beat_seq = 0
        self.next_beat = 0.0
        self.subscriptions: list = []
        self._persist = False

    # ---- identity helpers ------------------------------------------------------------
    def spec(self, assembly: str, dep: Deployable | None = None) -> AssemblySpec:
        asm = (dep or self.dep).assembly(assembly)
        interval, _ = asm.heartbeat()
        return AssemblySpec(deployable=self.name, name=asm.name, uuid=asm.uuid or asm.name,
                            broker_url=self.broker_url,
                            state_dir=self.dir / "assemblies" / asm.name,
                            image=asm.image, heartbeat_interval=interval)

    def _node_of_uuid(self, uuid: str) -> str | None:
        for asm in self.dep.assemblies:
            if uuid in (asm.uuid, asm.name):
                return asm.name
        return None

    def _service(self, assembly: str, service: str):
        try:
            return self.dep.assembly(assembly).service(service)
        except KeyError:
            return None

    def _assemblies(self) -> list[str]:
        return [a.name for a in self.dep.assemblies]

    # ---- states and events -----------------------------------------------------------
    def state(self, *key: str) -> str | None:
        return self.states.get(key)

    def change_state(self, key: tuple[str, ...], new: str, reason: str | None = None,
                     **extra: Any) -> bool:
        """The one place states change: check the transition, store it, emit the event."""
        kind = ("deployable", "assembly", "resource")[len(key)]
        old = self.states.get(key)
        if old == new:
            return False
        try:
            check_transition(kind, old, new)
        except TransitionError as exc:
            self.violations.append(f"{'/'.join(key) or self.name}: {exc}")
            log.warning("%s (%s): applied anyway", exc, "/".join(key) or self.name)
        self.states[key] = new
        if reason:
            self.reasons[key] = reason
        self.store.save_state(kind, "/".join(key) or self.name, new, reason)
        etype = {0: EventType.DEPLOYABLE_STATE_CHANGE, 1: EventType.ASSEMBLY_STATE_CHANGE,
                 2: EventType.RESOURCE_STATE_CHANGE}[len(key)]
        self.emit(etype, *key, state=new, reason=reason, previous=old, **extra)
        log.info("%s %s: %s -> %s%s", kind, "/".join(key) or self.name, old, new,
                 f" ({reason})" if reason else "")
        return True

    def emit(self, etype: EventType, assembly: str | None = None, resource: str | None = None,
             *, state: str | None = None, reason: str | None = None, **extra: Any) -> Event:
        """Number, log and publish one event."""
        draft = Event(None, None, etype, self.name, assembly, resource, state, reason, **extra)

        def make(seq: int):
            event = draft.with_seq(seq)
            return event.to_xml(), iso(event.time.timestamp()), etype.value, assembly, resource

        seq, xml = self.store.add_event(make)
        event = draft.with_seq(seq)
        try:
            self.bus.publish(event.topic_key(), Message(body=xml, subject=etype.value,
                                                        opcode="event"))
        except Exception as exc:       # the event is in the log; events_query serves it
            log.warning("event %d not published: %s", seq, exc)
        return event

    def _resource_state(self, asm: str, svc: str, new: str, reason: str | None = None) -> None:
        key = (asm, svc)
        extra: dict[str, str] = {}
        if new == R.RUNNING:
            incident = self.incidents.recovered(key, time.time())
            if incident is not None:
                extra = incident.timing()
                reason = reason or extra.pop("reason", None)
                extra.pop("reason", None)
        elif new == R.FAILED and reason:
            extra = {"incident": self.incidents.failed(key, time.time(), reason).id}
        if new == R.STARTING and self.state(asm, svc) == R.FAILED:
            self.change_state(key, R.RESTARTING, "recovering")
        self.change_state(key, new, reason, **extra)

    def _assembly_state(self, asm: str, new: str, reason: str | None = None) -> None:
        key = (asm,)
        extra: dict[str, str] = {}
        if new == A.RUNNING:
            incident = self.incidents.recovered(key, time.time())
            if incident is not None:
                extra = incident.timing()
                reason = reason or extra.pop("reason", None)
                extra.pop("reason", None)
        elif new == A.FAILED and reason:
            extra = {"incident": self.incidents.failed(key, time.time(), reason).id}
        if new == A.STARTING and self.state(asm) in (A.FAILED, A.RUNNING):
            self.change_state(key, A.RESTARTING, reason)
        self.change_state(key, new, reason, **extra)

    def _update_deployable_state(self) -> None:
        current = self.state()
        if self.stopping or self.gave_up or current in (D.STOPPING, D.STOPPED, D.FAILED):
            return
        if self.tracker.mass_loss:
            return
        whole = all(self.state(a) == A.RUNNING for a in self._assemblies()) and all(
            self.state(a.name, s.name) == R.RUNNING for a, s in self.dep.services())
        if whole:
            self.change_state((), D.RUNNING)
        elif current == D.RUNNING:
            self.change_state((), D.DEGRADED, "a component failed and is being recovered")

    # ---- startup and the loop --------------------------------------------------------
    def start(self) -> None:
        """Connect, restore, find running sandboxes; the loop (``serve_forever``) does the rest."""
        self._write_pid()
        stored = {k: v for k, v in self.store.states("resource").items()}
        for key, (state, reason) in stored.items():
            asm, _, svc = key.partition("/")
            if self._service(asm, svc) is not None:
                self.states[(asm, svc)] = state
                if reason:
                    self.reasons[(asm, svc)] = reason
        for key, (state, _) in self.store.states("assembly").items():
            if key in self._assemblies():
                self.states[(key,)] = state
        dep_state = self.store.states("deployable").get(self.name)
        self.bus.start(timeout=30.0)
        key = self.name
        subs = [self.bus.subscribe(f"pcloud.heartbeat.{key}.*", self._on_heartbeat),
                self.bus.subscribe(f"pcloud.report.{key}.*", self._on_report),
                self.bus.serve(f"pcloud.dpe.{key}", self._handlers())]
        for sub in subs:
            sub.wait_attached(10.0)
        self.subscriptions = subs
        self.bus.on_reconnect(lambda: self.queue.put(("reconnect",)))
        if dep_state and dep_state[0] not in (D.STOPPED, D.STOPPING, D.FAILED):
            self.states[()] = dep_state[0]
        else:
            self.states.pop((), None)
            self.change_state((), D.STARTING)
        now = time.monotonic()
        for asm in self.dep.assemblies:
            self._ensure_states(asm.name)
            interval, misses = asm.heartbeat()
            if self.driver.status(self.spec(asm.name)) is PowerState.RUNNING:
                log.info("assembly %s is running: adopting it", asm.name)
                self.tracker.expect(asm.name, interval, misses, now,
                                    boot_timeout=max(ADOPT_TIMEOUT, interval * misses))
                self.awaiting.add(asm.name)

    def _ensure_states(self, asm: str) -> None:
        if self.state(asm) is None:
            self.change_state((asm,), A.PENDING)
        for svc in self.dep.assembly(asm).services:
            if self.state(asm, svc.name) is None:
                self.change_state((asm, svc.name), R.PENDING)

    def _write_pid(self) -> None:
        tmp = self.dir / "dped.pid.tmp"
        tmp.write_text(f"{os.getpid()}\n")
        tmp.replace(self.dir / "dped.pid")

    def serve_forever(self) -> int:
        """Run the loop until stopped; returns the exit code."""
        if self.handle_signals:
            for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                signal.signal(signum, lambda s, _f: self.queue.put(("signal", s)))
        try:
            while self.exit_code is None:
                self._turn()
        finally:
            self._shutdown()
        return self.exit_code

    def _turn(self) -> None:
        try:
            item = self.queue.get(timeout=self._sleep_time())
        except queue.Empty:
            item = None
        while item is not None:
            self._dispatch(item)
            try:
                item = self.queue.get_nowait()
            except queue.Empty:
                item = None
        self._tick()
        if self.dirty and self.exit_code is None:
            self._converge()
        self._update_deployable_state()
        if self._persist:
            self._persist = False
            self.store.save_json("escalation", self.policy.snapshot())
            self.store.save_json("fail_counts", {"/".join(k): v
                                                 for k, v in self.fail_counts.items()})

    def _sleep_time(self) -> float:
        now = time.monotonic()
        due = [self.next_beat]
        deadline = self.tracker.next_deadline(now)
        if deadline is not None:
            due.append(deadline)
        due.extend(self.holds.values())
        if self.recheck_at is not None:
            due.append(self.recheck_at)
        return min(max(0.0, min(due) - now), 1.0)

    def _dispatch(self, item: tuple) -> None:
        kind, *args = item
        try:
            getattr(self, f"_handle_{kind}")(*args)
        except Exception:
            log.exception("handling %s failed", kind)

    def _shutdown(self) -> None:
        for sub in self.subscriptions:
            try:
                sub.cancel()
            except Exception:
                pass
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.bus.close()
        self.store.close()
        (self.dir / "dped.pid").unlink(missing_ok=True)

    # ---- timers ------------------------------------------------------------------------
    def _tick(self) -> None:
        now = time.monotonic()
        if now >= self.next_beat:
            self.next_beat = now + DPE_HEARTBEAT_INTERVAL
            self._publish_heartbeat()
        for key, due in list(self.holds.items()):
            if now >= due:
                del self.holds[key]
                self.dirty = True
        if self.recheck_at is not None and now >= self.recheck_at:
            self.recheck_at = None
            self.dirty = True
        if not self.stopping:
            self._check_heartbeats(now)

    def _publish_heartbeat(self) -> None:
        self.beat_seq += 1
        elem = etree.Element("heartbeat", deployable=self.name, assembly="-",
                             seq=str(self.beat_seq), started=self.started,
                             interval=f"{DPE_HEARTBEAT_INTERVAL:g}",
                             state=self.state() or D.STARTING, time=iso(time.time()),
                             pid=str(os.getpid()))
        try:
            self.bus.publish(f"pcloud.heartbeat.{self.name}.-",
                             Message(body=elem, subject="heartbeat", opcode="heartbeat"))
        except Exception as exc:
            log.debug("DPE heartbeat not sent: %s", exc)

    # ---- heartbeats ----------------------------------------------------------------------
    def _on_heartbeat(self, msg: Message) -> None:
        self.queue.put(("heartbeat", msg, time.monotonic()))

    def _handle_heartbeat(self, msg: Message, received: float) -> None:
        root = xmlsafe.parse(msg.body, source="heartbeat")
        asm = root.get("assembly")
        if root.tag != "heartbeat" or root.get("deployable") != self.name or asm in (None, "-"):
            return
        beat = self.tracker.beat(asm, int(root.get("seq", "0")), root.get("started", ""),
                                 received, root.get("digest"))
        if beat is None or self.stopping:
            return
        status = self.observed.status(asm)
        if BeatKind.FIRST in beat.kinds and status is not AssemblyStatus.LOST:
            self._assembly_online(asm)
        elif BeatKind.RESTARTED in beat.kinds and status is AssemblyStatus.ONLINE:
            log.info("agent of %s restarted: probing its resources again", asm)
            self._reprobe(asm)
        self._check_heartbeats(received)

    def _assembly_online(self, asm: str) -> None:
        """First beat of a booted or adopted assembly: probe its resources."""
        self.awaiting.discard(asm)
        if self.observed.status(asm) is not AssemblyStatus.ONLINE:
            self.observed.rejoined(asm)
        self.policy.healthy(asm, None, time.time())
        if self.state(asm) in (A.PENDING, A.STOPPED):
            self._assembly_state(asm, A.STARTING)
        self._assembly_state(asm, A.RUNNING)
        self._abort("assembly online")

    def _reprobe(self, asm: str) -> None:
        self.observed.rejoined(asm)
        self._abort(f"re-probing {asm}")

    def _check_heartbeats(self, now: float) -> None:
        if not self.bus.connected:
            # Our own link is down: silence proves nothing. Deadlines restart on reconnect.
            self.tracker.grace(now, RECONNECT_GRACE)
            return
        verdict = self.tracker.check(now)
        if verdict.mass_loss_started:
            self._mass_loss(verdict.mass_loss_started)
        if verdict.mass_loss_ended:
            self.emit(EventType.DEPLOYABLE_STATE_CHANGE, state=self.state(),
                      reason="heartbeats are back: re-probing all assemblies")
            for asm in self._assemblies():
                if self.observed.status(asm) is AssemblyStatus.ONLINE:
                    self._reprobe(asm)
            self._update_deployable_state()
        for asm in verdict.lost:
            self._assembly_lost(asm, self._lost_reason(asm))

    def _lost_reason(self, asm: str) -> str:
        watch = self.tracker.watches.get(asm)
        if watch is None or watch.last is None:
            return "no heartbeat after boot"
        return f"missed {watch.misses} heartbeats ({watch.timeout:g} s)"

    def _mass_loss(self, silent: tuple[str, ...]) -> None:
        """Most assemblies went silent at once: a broker or network fault, not N failures."""
        reason = (f"heartbeats of {len(silent)} assemblies ({', '.join(silent)}) stopped at "
                  "once: broker or network fault suspected, nothing is fenced")
        if self.state() in (D.RUNNING, D.STARTING, D.RECOVERING):
            self.change_state((), D.DEGRADED, reason)
        else:
            self.emit(EventType.DEPLOYABLE_STATE_CHANGE, state=self.state(), reason=reason)
        for asm in silent:
            try:
                gone = self.driver.status(self.spec(asm)) is PowerState.STOPPED
            except DriverError:
                gone = False
            if gone and self.tracker.declare_lost(asm):
                self._assembly_lost(asm, "its sandbox is gone")

    def _assembly_lost(self, asm: str, reason: str) -> None:
        if self.stopping or asm in self.busy and self.busy[asm] != "start":
            return
        self.busy.pop(asm, None)
        self.awaiting.discard(asm)
        log.warning("assembly %s lost: %s", asm, reason)
        decision = self.policy.assembly_failed(asm, time.time())
        self.fail_counts[(asm,)] = self.fail_counts.get((asm,), 0) + 1
        self._persist = True
        for svc in self.dep.assembly(asm).services:
            if self.state(asm, svc.name) not in (R.PENDING, R.STOPPED):
                self.incidents.failed((asm, svc.name), time.time(), f"assembly {asm} lost")
                self._resource_state(asm, svc.name, R.PENDING, f"assembly {asm} lost")
        self._assembly_state(asm, A.FAILED, reason)
        if self._escalate(decision, reason):
            return
        self.observed.set_lost(asm)
        if decision.delay:
            self.holds[(asm,)] = time.monotonic() + decision.delay
        self._abort(f"assembly {asm} lost")

    # ---- reports ---------------------------------------------------------------------------
    def _on_report(self, msg: Message) -> None:
        self.queue.put(("report", msg, time.time()))

    def _handle_report(self, msg: Message, received: float) -> None:
        root = xmlsafe.parse(msg.body, source="report")
        asm, svc = root.get("assembly"), root.get("resource")
        if (root.tag != "report" or root.get("deployable") != self.name or self.stopping
                or self._service(asm, svc) is None
                or self.observed.status(asm) is not AssemblyStatus.ONLINE):
            return
        rc = int(root.get("rc", "1"))
        hist = self.observed.resource(asm, rsc_id(asm, svc))
        if hist is None or not hist.monitors:
            return
        interval = int(root.get("interval", "0"))
        if interval not in hist.monitors:
            interval = next(iter(hist.monitors))
        previous = hist.monitors[interval]
        if previous.rc == rc:
            return
        self.observed.report_monitor(asm, rsc_id(asm, svc), interval, rc, now=received)
        if rc == previous.expected_rc:
            return
        reason = root.get("reason") or f"monitor returned rc {rc}"
        self._resource_failed(asm, svc, reason, _report_time(root, received))

    def _resource_failed(self, asm: str, svc: str, reason: str, detected: float) -> None:
        """A resource failed (report, monitor or start): restart it or escalate."""
        self._cap_fail_counts(asm, svc)
        self.fail_counts[(asm, svc)] = self.fail_counts.get((asm, svc), 0) + 1
        self._persist = True
        self.incidents.failed((asm, svc), detected, reason)
        self._resource_state(asm, svc, R.FAILED, reason)
        self._abort(f"{asm}/{svc} failed")
        decision = self.policy.resource_failed(asm, svc, time.time())
        if not self._escalate(decision, reason) and decision.delay:
            log.info("%s/%s flaps: restart delayed %.1f s", asm, svc, decision.delay)
            self.holds[(asm, svc)] = time.monotonic() + decision.delay

    def _cap_fail_counts(self, asm: str, svc: str) -> None:
        """Escalation is the DPE's: keep the engine's migration-threshold from firing first."""
        hist = self.observed.resource(asm, rsc_id(asm, svc))
        if hist is None:
            return
        for key, count in hist.fail_counts.items():
            if not key.startswith("stop_"):
                hist.fail_counts[key] = min(count, 1)

    # ---- escalation ------------------------------------------------------------------------
    def _escalate(self, decision: Decision, reason: str) -> bool:
        """Act on an escalated decision; False when it is a plain restart."""
        if not decision.escalated:
            return False
        what = f"{decision.assembly}/{decision.resource}" if decision.resource else \
            decision.assembly
        target = {Level.ASSEMBLY: "assembly", Level.DEPLOYABLE: "deployable"}.get(
            decision.level)
        text = (f"{what} failed {decision.failures} times within {decision.period:g} s "
                f"(last: {reason})")
        self.emit(EventType.ESCALATION, decision.assembly, decision.resource,
                  reason=text if target else f"{text}; the deployable keeps failing: giving up",
                  escalated_to=target, escalated_from=decision.escalated_from.value)
        if decision.level is Level.ASSEMBLY:
            self._restart_assemblies([decision.assembly], f"escalation: {text}")
        elif decision.level is Level.DEPLOYABLE:
            self.change_state((), D.RECOVERING, f"escalation: {text}")
            self._restart_assemblies(self._assemblies(), f"escalation: {text}")
        else:
            self.gave_up = True
            self.change_state((), D.FAILED, f"escalation gave up: {text}")
            self._stop_assemblies(self._assemblies())
        return True

    def _restart_assemblies(self, names: list[str], reason: str) -> None:
        """Stop (gracefully, then by force) and boot again: resources start from scratch."""
        self._abort(reason)
        for asm in names:
            for svc in self.dep.assembly(asm).services:
                if self.state(asm, svc.name) not in (R.PENDING, R.STOPPED):
                    self.incidents.failed((asm, svc.name), time.time(), reason)
                    self._resource_state(asm, svc.name, R.PENDING, reason)
            if self.state(asm) == A.RUNNING:
                self._assembly_state(asm, A.RESTARTING, reason)
            self.incidents.failed((asm,), time.time(), reason)
            self.busy[asm] = "restart"
            self.awaiting.discard(asm)
            self.tracker.restart_watch(asm, time.monotonic())
            self.observed.set_fenced(asm)
            self._submit_driver(asm, "restart")

    def _stop_assemblies(self, names: list[str]) -> None:
        for asm in names:
            for svc in self.dep.assembly(asm).services:
                if self.state(asm, svc.name) not in (R.STOPPED, R.PENDING, R.STOPPING):
                    if self.state(asm, svc.name) == R.STARTING:
                        self.change_state((asm, svc.name), R.STOPPING)
                    else:
                        self._resource_state(asm, svc.name, R.STOPPING)
            if self.state(asm) not in (A.STOPPED,):
                self._assembly_state(asm, A.STOPPING)
            self.busy[asm] = "stop"
            self.awaiting.discard(asm)
            self.tracker.forget(asm)
            self._submit_driver(asm, "stop")

    # ---- driver operations -----------------------------------------------------------------
    def _submit_driver(self, asm: str, operation: str) -> None:
        spec = self.spec(asm)
        svc_timeouts = [s.stop_timeout or 0 for s in self.dep.assembly(asm).services]
        timeout = max([STOP_TIMEOUT, *svc_timeouts]) + 5

        def work() -> None:
            error = None
            try:
                if operation == "start":
                    self.driver.start(spec)
                elif operation == "fence":
                    self.driver.fence(spec)
                else:
                    self.driver.stop(spec, timeout)
            except Exception as exc:
                error = str(exc) or type(exc).__name__
            self.queue.put(("driver_done", asm, operation, error))

        self.pool.submit(work)

    def _handle_driver_done(self, asm: str, operation: str, error: str | None) -> None:
        if self.busy.get(asm) == operation:
            del self.busy[asm]
        if operation == "stop":
            self.observed.set_fenced(asm)
            for svc in self.dep.assembly(asm).services:
                if self.state(asm, svc.name) not in (R.STOPPED, R.PENDING, R.STOPPING):
                    self.change_state((asm, svc.name), R.STOPPING)
                self.change_state((asm, svc.name), R.STOPPED, "assembly stopped")
            self._assembly_state(asm, A.STOPPED, error)
            self._maybe_finish_stop()
            return
        if error:
            log.error("%s of assembly %s failed: %s", operation, asm, error)
            self._assembly_state(asm, A.FAILED, f"{operation} failed: {error}")
            self.holds[(asm,)] = time.monotonic() + 5.0
            self.awaiting.discard(asm)
            self.observed.set_fenced(asm)
        elif operation == "restart":
            self.observed.set_fenced(asm)
        self.dirty = True

    def _boot(self, asm: str) -> None:
        interval, misses = self.dep.assembly(asm).heartbeat()
        if asm in self.tracker.watches:
            self.tracker.restart_watch(asm, time.monotonic())
        else:
            self.tracker.expect(asm, interval, misses, time.monotonic())
        self._assembly_state(asm, A.STARTING)
        self.busy[asm] = "start"
        self.awaiting.add(asm)
        self._submit_driver(asm, "start")

    # ---- converge: boot, compute, execute ----------------------------------------------------
    def _abort(self, reason: str) -> None:
        self.dirty = True
        self.idle_computes = 0
        if self.run is not None:
            self.run.abort(reason)

    def _converge(self) -> None:
        if self.run is not None and not self.run.finished:
            return
        self.run = None
        self.dirty = False
        if self.stopping or self.gave_up:
            return
        for asm in self._assemblies():
            if self._needs_boot(asm):
                self._boot(asm)
        self.idle_computes += 1
        if self.idle_computes > MAX_IDLE_COMPUTES:
            log.error("transitions keep being computed without progress; waiting for news")
            return
        now = datetime.now(UTC)
        graph = self.engine.compute(build_cib(self.dep.to_element(), self.observed, now=now),
                                    now)
        self.recheck_at = None
        if graph.recheck_by:
            self.recheck_at = time.monotonic() + max(0.0, graph.recheck_by - now.timestamp())
        if len(graph) == 0:
            self.idle_computes = 0
            return
        self.transition_id += 1
        log.debug("transition %d: %s", self.transition_id, ", ".join(
            a.name for a in graph.actions))
        self.run = GraphRun(graph, self.transition_id, self._launch, self._held)
        self._graph = graph
        self.run.start()
        if self.run.finished:
            self.run = None

    def _needs_boot(self, asm: str) -> bool:
        """Should be up, is known down, and nothing is under way for it."""
        return (asm not in self.busy and asm not in self.awaiting
                and (asm,) not in self.holds
                and self.observed.status(asm) is AssemblyStatus.FENCED)

    def _held(self, action: Action) -> bool:
        if action.kind != "rsc_op" or action.operation != "start" or not action.resource:
            return False
        asm, svc = split_rsc_id(action.resource)
        return (asm, svc) in self.holds

    def _launch(self, action: Action) -> None:
        """Called by GraphRun on the main loop: note the state, run the action on the pool."""
        self._note_launch(action)
        run = self.run
        transition = self.transition_id

        def work() -> None:
            result = self.runner.run(action)
            self.queue.put(("action_done", run, transition, action, result))

        self.pool.submit(work)

    def _note_launch(self, action: Action) -> None:
        if action.kind != "rsc_op" or not action.resource:
            return
        asm, svc = split_rsc_id(action.resource)
        if self._service(asm, svc) is None:
            return
        state = self.state(asm, svc)
        if action.operation == "start":
            self._resource_state(asm, svc, R.STARTING)
        elif action.operation == "stop":
            restarting = any(a.operation == "start" and a.resource == action.resource
                             for a in self._graph.actions)
            if state in (R.FAILED, R.RUNNING) and restarting:
                self._resource_state(asm, svc, R.RESTARTING)
            elif state in (R.RUNNING, R.FAILED, R.BLOCKED):
                self._resource_state(asm, svc, R.STOPPING)

    def _handle_action_done(self, run: GraphRun, transition: int, action: Action,
                            result: ActionResult) -> None:
        now = result.finished or time.time()
        ok = result.succeeded(action)
        if action.kind == "rsc_op" and action.node and (
                self.stopping or self.observed.status(action.node) is not AssemblyStatus.ONLINE):
            # Its assembly was lost or restarted meanwhile: the result says nothing now.
            if run is not None:
                run.complete(action, False)
            self.dirty = True
            return
        self._record(action, result, now, transition)
        if action.kind == "crm_event" and action.operation == "stonith" and ok:
            for uuid in action.downed or [action.node]:
                asm = self._node_of_uuid(uuid) or uuid
                self.emit(EventType.FENCING, asm, reason="fenced before restart")
                self._assembly_state(asm, A.RESTARTING, "fenced")
                self.tracker.restart_watch(asm, time.monotonic())
                self.awaiting.discard(asm)
        elif action.kind == "rsc_op" and action.resource:
            self._note_result(action, result, ok)
        if run is not None:
            run.complete(action, result.as_expected(action))
        self.dirty = True

    def _record(self, action: Action, result: ActionResult, now: float, transition: int
                ) -> None:
        if action.is_probe and result.rc == 0 and result.op_status == 0:
            self.observed.record_op(
                action.node, action.resource, action.rsc_class or "ocf", action.rsc_type or "",
                "monitor", 0, 0, provider=action.provider, params=action.parameters,
                timeout_ms=action.timeout_ms, expected_rc=0, now=now, action_id=action.id,
                transition_id=transition)
            return
        self.observed.record(action, result.rc, now=now, op_status=result.op_status,
                             transition_id=transition)

    def _note_result(self, action: Action, result: ActionResult, ok: bool) -> None:
        asm, svc = split_rsc_id(action.resource)
        if self._service(asm, svc) is None:
            if action.operation == "delete":
                self.states.pop((asm, svc), None)
                self.store.delete_state("resource", f"{asm}/{svc}")
            elif action.operation == "stop" and self.state(asm, svc):
                self.change_state((asm, svc), R.STOPPED, "removed from the deployable")
            return
        reason = result.reason or f"{action.operation} returned rc {result.rc}"
        state = self.state(asm, svc)
        if action.operation == "start":
            if ok:
                self.policy.healthy(asm, svc, time.time())
                self._resource_state(asm, svc, R.RUNNING)
            elif result.rc in (5, 6, 2):
                self._resource_state(asm, svc, R.BLOCKED, reason)
            else:
                self._resource_failed(asm, svc, reason, result.finished)
        elif action.operation == "stop":
            if not ok:
                self._resource_state(asm, svc, R.FAILED, f"stop failed: {reason}")
            elif state == R.STOPPING:
                self._resource_state(asm, svc, R.STOPPED)
        elif action.operation == "monitor":
            if action.is_probe:
                if result.rc == 0 and state != R.RUNNING:
                    if state not in (R.PENDING, R.FAILED):
                        self.change_state((asm, svc), R.PENDING)
                    self._resource_state(asm, svc, R.RUNNING, "found running")
                elif result.rc == 7 and state == R.RUNNING:
                    self._resource_failed(asm, svc, "probe found it not running",
                                          result.finished)
            elif not ok:
                self._resource_failed(asm, svc, reason, result.finished)

    # ---- stop ----------------------------------------------------------------------------------
    def _handle_signal(self, signum: int) -> None:
        log.info("signal %d: exiting, leaving the deployable running", signum)
        self.exit_code = 0

    def _begin_stop(self) -> None:
        if self.stopping:
            return
        self.stopping = True
        self.change_state((), D.STOPPING, "deployable_stop")
        if self.run is not None:
            self.run.abort("deployable stopping")
        self._stop_waves = self._stop_order()
        self._next_stop_wave()

    def _stop_order(self) -> list[list[str]]:
        """Assemblies in waves: those whose services others depend on stop last."""
        remaining = set(self._assemblies())
        waves = []
        while remaining:
            needed = {d.first_assembly for d in self.dep.dependencies
                      if d.then_assembly in remaining and d.first_assembly != d.then_assembly}
            wave = sorted(remaining - needed) or sorted(remaining)
            waves.append(wave)
            remaining -= set(wave)
        return waves

    def _next_stop_wave(self) -> None:
        while self._stop_waves:
            wave = self._stop_waves.pop(0)
            live = [a for a in wave if self.state(a) != A.STOPPED or
                    self.driver.status(self.spec(a)) is PowerState.RUNNING]
            if live:
                self._stop_assemblies(live)
                return
        self._maybe_finish_stop()

    def _maybe_finish_stop(self) -> None:
        if not self.stopping or any(op == "stop" for op in self.busy.values()):
            return
        if self._stop_waves:
            self._next_stop_wave()
            return
        for asm, svc in [(a.name, s.name) for a, s in self.dep.services()]:
            if self.state(asm, svc) not in (R.STOPPED, R.PENDING):
                self.change_state((asm, svc), R.STOPPED, "deployable stopped")
        self.change_state((), D.STOPPED)
        self.exit_code = 0

    # ---- methods (run on the main loop through the queue) --------------------------------------
    def _handlers(self) -> dict:
        def on_loop(fn):
            def handler(body: etree._Element, msg: Message):
                future: Future = Future()
                self.queue.put(("call", fn, body, future))
                return future.result(timeout=30.0)
            return handler

        return {"deployable_status": on_loop(self._status),
                "deployable_reload": on_loop(self._reload),
                "deployable_stop": on_loop(self._stop_method),
                "event_raise": on_loop(self._event_raise),
                "events_query": self._events_query}

    def _handle_call(self, fn, body: etree._Element, future: Future) -> None:
        try:
            future.set_result(fn(body))
        except BaseException as exc:
            future.set_exception(exc)

    def _handle_reconnect(self) -> None:
        log.info("bus reconnected: grace period for agents, then re-probing")
        self.tracker.grace(time.monotonic(), RECONNECT_GRACE)
        for asm in self._assemblies():
            if self.observed.status(asm) is AssemblyStatus.ONLINE:
                self._reprobe(asm)

    def _summary(self) -> etree._Element:
        return etree.Element("deployable", name=self.name, state=self.state() or D.STARTING)

    def _status(self, body: etree._Element) -> etree._Element:
        root = self._summary()
        if self.dep.uuid:
            root.set("uuid", self.dep.uuid)
        for asm in self.dep.assemblies:
            a = etree.SubElement(root, "assembly", name=asm.name,
                                 state=self.state(asm.name) or A.PENDING,
                                 fail_count=str(self.fail_counts.get((asm.name,), 0)))
            if asm.uuid:
                a.set("uuid", asm.uuid)
            for svc in asm.services:
                r = etree.SubElement(a, "resource", name=svc.name,
                                     state=self.state(asm.name, svc.name) or R.PENDING,
                                     fail_count=str(self.fail_counts.get((asm.name, svc.name),
                                                                         0)))
                r.set("class", svc.klass)
                reason = self.reasons.get((asm.name, svc.name))
                if reason and r.get("state") != R.RUNNING:
                    r.set("reason", reason)
        return root

    def _stop_method(self, body: etree._Element) -> etree._Element:
        self._begin_stop()
        return etree.Element("deployable", name=self.name, state=D.STOPPING)

    def _event_raise(self, body: etree._Element) -> etree._Element:
        draft = Event.from_xml(body)
        event = self.emit(draft.type, draft.assembly, draft.resource, state=draft.state,
                          reason=draft.reason, **draft.extra)
        return event.to_element()

    def _events_query(self, body: etree._Element, msg: Message) -> etree._Element:
        try:
            since = int(body.get("since_seq", "0"))
            limit = min(int(body.get("limit", "100")), 10000)
        except ValueError:
            raise MethodError("invalid_request", "since_seq and limit must be integers") from None
        root = etree.Element("events")
        for xml in self.store.events(since, limit):
            root.append(etree.fromstring(xml))
        return root

    def _reload(self, body: etree._Element) -> etree._Element:
        new = Deployable.from_xml(body, source="deployable_reload")
        if new.name != self.name:
            raise MethodError("wrong_deployable",
                              f"this DPE manages {self.name!r}, not {new.name!r}")
        if new.infrastructure != self.dep.infrastructure:
            raise MethodError("invalid_request", "the infrastructure of a running deployable "
                              "cannot change; stop it and start it again")
        new = new.adopt_uuids(self.dep)
        change = diff(self.dep, new)
        old = self.dep
        self.dep = new
        self.store.set("deployable_xml", new.to_xml())
        self.policy = _rebuild_policy(self.policy, new)
        removed = list(change.assemblies_removed)
        for asm in removed:
            self.tracker.forget(asm)
            for svc in old.assembly(asm).services:
                self.states.pop((asm, svc.name), None)
                self.store.delete_state("resource", f"{asm}/{svc.name}")
            self.incidents.drop((asm,))
        if removed:
            self._stop_removed(old, removed)
        for asm in change.assemblies_added:
            self._ensure_states(asm)
        for asm, _svc in change.services_added:
            if asm not in change.assemblies_added:
                self._ensure_states(asm)
        for asm in change.assemblies_changed:
            interval, misses = new.assembly(asm).heartbeat()
            watch = self.tracker.watches.get(asm)
            if watch is not None:
                watch.interval, watch.misses = interval, misses
        if change:
            self.emit(EventType.CONFIG_RELOAD, reason=_describe(change))
            if change.assemblies_added or change.services_added:
                if self.state() in (D.RUNNING, D.DEGRADED):
                    self.change_state((), D.STARTING, "reload added components")
        self._abort("reload")
        return self._summary()

    def _stop_removed(self, old: Deployable, removed: list[str]) -> None:
        for asm in removed:
            spec = self.spec(asm, old)
            self.observed.assemblies.pop(asm, None)
            self.pool.submit(self._quiet_stop, spec)
            self.states.pop((asm,), None)
            self.store.delete_state("assembly", asm)

    def _quiet_stop(self, spec: AssemblySpec) -> None:
        try:
            self.driver.stop(spec, STOP_TIMEOUT)
        except Exception as exc:
            log.error("stopping removed assembly %s failed: %s", spec.name, exc)

    def _load_fail_counts(self) -> dict[tuple[str, ...], int]:
        raw = self.store.load_json("fail_counts", {})
        return {tuple(k.split("/")): int(v) for k, v in raw.items()}


def _rebuild_policy(old: EscalationPolicy, dep: Deployable) -> EscalationPolicy:
    new = policy_for(dep)
    new.restore(old.snapshot())
    return new


def _describe(change) -> str:
    parts = []
    for label, items in (("assemblies added", change.assemblies_added),
                         ("assemblies removed", change.assemblies_removed),
                         ("services added", change.services_added),
                         ("services removed", change.services_removed),
                         ("services changed", change.services_changed)):
        if items:
            names = [i if isinstance(i, str) else "/".join(i) for i in items]
            parts.append(f"{label}: {', '.join(names)}")
    if change.dependencies_added or change.dependencies_removed:
        parts.append("dependencies changed")
    return "; ".join(parts) or "attributes changed"


def _report_time(root: etree._Element, received: float) -> float:
    """The agent's own detection time when plausible (same host clock), else receipt."""
    text = root.get("time")
    if text:
        try:
            when = datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
        except ValueError:
            return received
        if received - 60 <= when <= received + 1:
            return min(when, received)
    return received


def _engine(name: str):
    try:
        return get_engine(name)
    except ImportError as exc:
        log.warning("engine %s unavailable (%s): using pacemaker", name, exc)
        return get_engine("pacemaker")


def run_dpe(dpe: Dpe) -> int:
    """Start and serve until stopped (the CLI's body; tests run it on a thread)."""
    dpe.start()
    return dpe.serve_forever()


def run_in_thread(dpe: Dpe) -> threading.Thread:
    thread = threading.Thread(target=run_dpe, args=(dpe,), name=f"dpe-{dpe.name}", daemon=True)
    thread.start()
    return thread
