"""The DPE daemon: keeps one deployable alive.

One main-loop thread owns all state. Bus callbacks (agent heartbeats and reports, method
requests, reconnects), signal handlers and pool threads finishing actions only put items on
its queue. Each loop turn handles every queued item, runs the timers (heartbeat deadlines,
back-off holds, the DPE's own heartbeat), then *converges*: boot assemblies that should be up
and are not, compute a transition graph from the CIB, and launch what the graph allows on a
thread pool. A failure report or a failed action aborts the running graph; once its running
actions finished, a new graph is computed from what is now known.

:class:`Dpe` is the runtime: its state, startup (restoring what the store knows and adopting
running assemblies) and the loop. Its behaviour is split by concern into mixins:

- :mod:`dpe_agent.lifecycle`: states and events (the one ``change_state``)
- :mod:`dpe_agent.detection`: heartbeats, agent reports, reconnects
- :mod:`dpe_agent.deaths`: assemblies the driver saw die, lost at once
- :mod:`dpe_agent.recovery`: restart or escalate, back-off
- :mod:`dpe_agent.convergence`: CIB -> transition graph -> actions -> results
- :mod:`dpe_agent.assemblies`: boot, restart, stop assemblies through the driver
- :mod:`dpe_agent.stopping`: ``deployable_stop`` and signals
- :mod:`dpe_agent.methods`: the bus methods

Policy (escalation, heartbeats, incident timing, the transition computer) lives in pure
modules; these are the shell around it.
"""

from __future__ import annotations

import logging
import os
import queue
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from dpe_agent.assemblies import AssemblyOps
from dpe_agent.convergence import Convergence, load_engine
from dpe_agent.deaths import Deaths
from dpe_agent.detection import Detection
from dpe_agent.drivers import (
    AssemblySpec,
    DriverError,
    InfrastructureDriver,
    PowerState,
    UnavailableDriver,
    get_driver,
)
from dpe_agent.executor import ActionRunner, GraphRun
from dpe_agent.heartbeats import HeartbeatTracker
from dpe_agent.identity import AgentLogins, DpeIdentity, local_identity
from dpe_agent.incidents import IncidentTracker, iso
from dpe_agent.lifecycle import Lifecycle
from dpe_agent.methods import Methods
from dpe_agent.observed import ObservedState
from dpe_agent.recovery import Recovery, policy_for
from dpe_agent.status import decode_keyed, encode_keyed
from dpe_agent.stopping import Stopping
from dpe_agent.store import DpeStore
from pcloud import identity as roles
from pcloud.broker_admin import admin_from_config
from pcloud.bus import Backoff, Bus, Message, connect
from pcloud.bus.dedup import RecentIds
from pcloud.credentials import CredentialsError, without_credentials
from pcloud.deployable import Deployable
from pcloud.events import EventType
from pcloud.fsutil import private_dir
from pcloud.states import AssemblyState as A
from pcloud.states import DeployableState as D
from pcloud.wire.heartbeat import Heartbeat

log = logging.getLogger("dped")

DPE_HEARTBEAT_INTERVAL = 1.0
CONNECT_ATTEMPT = 10.0
CONNECT_BACKOFF = Backoff(first=0.5, cap=5.0)
ADOPT_TIMEOUT = 10.0
MAIN_LOOP_STALL = 0.2        # seconds of oversleep that mean this process was paused
STALL_WARNING = 1.0          # a pause this long is worth a warning


def dpe_dir(state_dir: Path, deployable: str) -> Path:
    return Path(state_dir) / "dpe" / deployable


class Dpe(Lifecycle, Detection, Deaths, Recovery, Convergence, AssemblyOps, Stopping, Methods):
    """The runtime of one deployable's DPE (see the module docstring)."""

    def __init__(self, deployable: Deployable, state_dir: Path, *, engine: str = "native",
                 driver: Any = None, broker_url: str | None = None,
                 identity: DpeIdentity | None = None, requested_by: str | None = None,
                 handle_signals: bool = False, seq_floor: int = 0) -> None:
        self.dir = private_dir(dpe_dir(state_dir, deployable.name))
        self.store = DpeStore(self.dir / "dpe.sqlite")
        self.store.raise_seq(seq_floor)      # the CPE's --seq-floor: events it numbered
        saved = self.store.get("deployable_xml")
        if saved:
            deployable = deployable.adopt_uuids(Deployable.from_xml(saved))
        self.dep = deployable
        self.name = deployable.name
        self.store.set("deployable_xml", deployable.to_xml())
        self.engine = load_engine(engine)
        self.identity = identity or _identity_by_hand(deployable.name, broker_url)
        self.requested_by = requested_by
        self.bus = self._new_bus()
        self.broker_url = without_credentials(self.bus.url)   # what agents are told
        self.driver = driver or self._driver_for(deployable.infrastructure)
        self.handle_signals = handle_signals
        self.observed = ObservedState()
        self.tracker = HeartbeatTracker()
        self.policy = policy_for(deployable)
        self.policy.restore(self.store.load_json("escalation", {}))
        self.incidents = IncidentTracker()
        self.states: dict[tuple[str, ...], str] = {}
        self.violations: list[str] = []          # lifecycle violations (tests assert none)
        self.reasons: dict[tuple[str, ...], str] = {}
        self.fail_counts: dict[tuple[str, ...], int] = {
            k: int(v) for k, v in decode_keyed(self.store.load_json("fail_counts", {})).items()}
        self.failures: dict[tuple[str, ...], tuple[float, str]] = {
            k: (float(v[0]), str(v[1]))
            for k, v in decode_keyed(self.store.load_json("failures", {})).items()}
        # SimpleQueue: its put is safe to call from the signal handler (Queue.put is not
        # reentrant), and nothing here needs task_done/join/maxsize.
        self.queue: queue.SimpleQueue[tuple] = queue.SimpleQueue()
        self.pool = ThreadPoolExecutor(max_workers=16, thread_name_prefix="dpe-action")
        self.logins = AgentLogins(self.identity.make_issuer(self.bus), self.store, self.pool)
        self.runner = ActionRunner(self.bus, self.name, self.driver, self.spec,
                                   self._node_of_uuid, self._service, self.logins)
        self.run: GraphRun | None = None
        self.transition_id = 0
        self.busy: dict[str, str] = {}           # assembly -> driver operation in flight
        self.losses: dict[str, int] = {}         # assembly -> times lost: a result of an
        #                                          action launched before a loss is stale
        self.awaiting: set[str] = set()          # sandbox up (booted or adopted), no beat yet
        self.adopting: set[str] = set()          # found running at start, no beat yet
        self.adding: set[tuple[str, ...]] = set()   # added by a reload, not yet running
        self.reconnects = 0                      # bus reconnects so far (dispatcher thread)
        self.reprobe_on_beat: set[str] = set()   # re-probe once its agent beats again
        self.holds: dict[tuple[str, ...], float] = {}   # back-off: key -> monotonic due
        self.blocked: dict[tuple[str, str], float] = {}  # blocked resource -> re-probe due
        self.dirty = True
        self.idle_computes = 0
        self.recheck_at: float | None = None
        self.stopping = False
        self.stop_graphs = 0                     # stop graphs run by this stop
        self._stop_waves: list[list[str]] | None = None   # assemblies still to stop; None
        #                                          while the resources are being stopped
        self.gave_up = False
        self.exit_code: int | None = None
        self.started = iso(time.time())
        self.beat_seq = 0
        self.next_beat = 0.0
        self.last_tick = time.monotonic()         # the last heartbeat check (_tick)
        self.subscriptions: list = []
        self.impostor_events: dict[str, float] = {}   # assembly -> last uuid config_error
        self.wrong_logins = RecentIds(4096)          # "asm:user" already logged as dropped
        self._persist = False

    def _new_bus(self) -> Bus:
        """A bus logged in as this DPE, its agents' answers coming on a topic key of its
        own (agents may publish only on topic keys)."""
        user = roles.dpe_user(self.name)
        return Bus(url=self.identity.url, name=f"dped-{self.name}",
                   reply_topic_key=roles.reply_topic_key(user))

    @staticmethod
    def _driver_for(infrastructure: str) -> InfrastructureDriver:
        """The deployable's driver; one that cannot be had is reported once started."""
        try:
            return get_driver(infrastructure)
        except DriverError as exc:
            log.error("%s", exc)
            return UnavailableDriver(infrastructure, str(exc))

    def _refuse_unavailable_driver(self) -> None:
        """No driver for the infrastructure: a config_error and ``failed``, nothing launched."""
        reason = self.driver.reason
        self.emit(EventType.CONFIG_ERROR, reason=f"infrastructure_unavailable: {reason}")
        self.gave_up = True
        self.change_state((), D.FAILED, reason)

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
        for key, (state, reason) in self.store.states("assembly").items():
            if key in self._assemblies():
                self.states[(key,)] = state
                if reason:
                    self.reasons[(key,)] = reason
        dep_state = self.store.states("deployable").get(self.name)
        self._connect()
        key = self.name
        subs = [self.bus.subscribe(f"pcloud.heartbeat.{key}.*", self._on_heartbeat),
                self.bus.subscribe(f"pcloud.report.{key}.*", self._on_report),
                self.bus.serve(f"pcloud.dpe.{key}", self._handlers(),
                               authorize=self.identity.authorize)]
        for sub in subs:
            sub.wait_attached(10.0)
        self.subscriptions = subs
        self.bus.on_reconnect(self._on_reconnect)
        if dep_state and dep_state[0] not in (D.STOPPED, D.STOPPING, D.FAILED):
            self.states[()] = dep_state[0]
        else:
            self.states.pop((), None)
            self.change_state((), D.STARTING, **self._who())
        self.requested_by = None
        self.logins.start(self._assemblies())
        if isinstance(self.driver, UnavailableDriver):
            self._refuse_unavailable_driver()
        self._watch_deaths()
        now = time.monotonic()
        for asm in self.dep.assemblies:
            self._ensure_states(asm.name)
            interval, misses = asm.heartbeat()
            if self.driver.status(self.spec(asm.name)) is PowerState.RUNNING:
                # one that was still booting gets a boot's timeout, not the short deadline
                # of one that ran: a VM's first heartbeat may be tens of seconds away
                booting = self.state(asm.name) in (A.STARTING, A.RESTARTING)
                log.info("assembly %s is running%s: adopting it", asm.name,
                         " (it was booting)" if booting else "")
                timeout = (self._boot_timeout(interval, misses) if booting
                           else max(ADOPT_TIMEOUT, interval * misses))
                self.tracker.expect(asm.name, interval, misses, now, boot_timeout=timeout)
                self.awaiting.add(asm.name)
                self.adopting.add(asm.name)

    def _connect(self) -> None:
        """Connect, waiting as long as it takes for a broker that is down (a DPE started
        during an outage, e.g. by the CPE after the previous one died). Nothing is done
        meanwhile: without the bus nothing can be learnt, so nothing can have failed. Bad
        credentials or an untrusted certificate cannot get better: BusError at once."""
        bus = connect(self._new_bus, attempt=CONNECT_ATTEMPT, backoff=CONNECT_BACKOFF)
        assert bus is not None               # no stop event: it waits as long as it takes
        self.bus = bus
        self.runner.bus = bus
        self.logins.issuer = self.identity.make_issuer(bus)

    def _write_pid(self) -> None:
        tmp = self.dir / "dped.pid.tmp"
        tmp.write_text(f"{os.getpid()}\n")
        tmp.replace(self.dir / "dped.pid")

    def serve_forever(self) -> int:
        """Run the loop until stopped; returns the exit code."""
        if self.handle_signals:
            for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                signal.signal(signum, lambda s, _f: self.queue.put(("signal", s)))
        self.last_tick = time.monotonic()    # start-up (connecting, adopting) is no stall
        try:
            while self.exit_code is None:
                self._turn()
        finally:
            self._shutdown()
        return self.exit_code

    def _turn(self) -> None:
        timeout = self._sleep_time()
        try:
            item = self.queue.get(timeout=timeout)
        except queue.Empty:
            item = None
        # Measured from the last heartbeat check, not from the wait: a pause that caught the
        # loop converging or persisting (not waiting) is excused too.
        self._excuse_stall(time.monotonic() - self.last_tick - timeout)
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
            self.store.save_json("fail_counts", encode_keyed(self.fail_counts))
            self.store.save_json("failures", encode_keyed(self.failures))

    def _excuse_stall(self, overslept: float) -> None:
        """After this process was paused (SIGSTOP, a starved host), move heartbeat deadlines
        out by the pause.

        Beats sent while we were frozen are still queued in the broker or the bus; judging
        that silence would fence healthy assemblies, or report a mass loss, for our own pause.
        """
        if overslept <= MAIN_LOOP_STALL:
            return
        log.log(logging.WARNING if overslept >= STALL_WARNING else logging.DEBUG,
                "main loop stalled %.1f s (process paused or starved): heartbeat deadlines "
                "moved out by as much", overslept)
        self.tracker.pause(overslept)

    def _sleep_time(self) -> float:
        now = time.monotonic()
        due = [self.next_beat]
        deadline = self.tracker.next_deadline(now)
        if deadline is not None:
            due.append(deadline)
        due.extend(self.holds.values())
        due.extend(self.blocked.values())
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
        now = self.last_tick = time.monotonic()
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
            self._reprobe_blocked(now)

    def _publish_heartbeat(self) -> None:
        self.beat_seq += 1
        elem = Heartbeat(self.name, self.beat_seq, self.started, DPE_HEARTBEAT_INTERVAL,
                         iso(time.time()), assembly="-", pid=os.getpid(),
                         state=str(self.state() or D.STARTING)).to_xml()
        try:
            self.bus.publish(f"pcloud.heartbeat.{self.name}.-",
                             Message(body=elem, subject="heartbeat", opcode="heartbeat"))
            self.echo.sent(time.monotonic())
        except Exception as exc:
            log.debug("DPE heartbeat not sent: %s", exc)


def _identity_by_hand(deployable: str, broker_url: str | None) -> DpeIdentity:
    """A DPE started without the CPE mints its own login: it needs the admin seam."""
    from pcloud import config

    admin = admin_from_config()
    if admin is None:
        raise CredentialsError(
            "dped without a CPE gives every assembly its own broker login, so it needs to "
            "administer the broker's users: run it with the private broker of its state dir "
            "(pcloud-broker start), or set PCLOUD_BROKER_ADMIN (see docs/security.md)")
    return local_identity(deployable, broker_url or config.broker_url(), admin)


def run_dpe(dpe: Dpe) -> int:
    """Start and serve until stopped (the CLI's body; tests run it on a thread)."""
    dpe.start()
    return dpe.serve_forever()


def run_in_thread(dpe: Dpe) -> threading.Thread:
    thread = threading.Thread(target=run_dpe, args=(dpe,), name=f"dpe-{dpe.name}", daemon=True)
    thread.start()
    return thread
