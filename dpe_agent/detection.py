"""How failures are noticed: assembly heartbeats, agent reports, bus reconnects.

Bus callbacks only queue; the ``_handle_*`` methods run on the main loop, feed the
heartbeat tracker and the observed state, and hand failures to :mod:`dpe_agent.recovery`.
A mixin of :class:`dpe_agent.daemon.Dpe`.

Heartbeats are the exception, as they are most of the traffic (issue 13: 5,000 a second at
5,000 assemblies). The bus thread reads each with a strict check of its attributes
(:meth:`pcloud.wire.heartbeat.Heartbeat.from_xml`, no RelaxNG run), checks its sender and
uuid, and records it in the heartbeat tracker (thread-safe). Only a beat that says
something new (an assembly online or restarted, changed addresses, a beat awaited after a
reconnect or during a mass loss) goes to the main loop; a beat the check refuses, or from
a wrong sender, goes there too, for the full schema and the reporting below.

Heartbeats and reports are untrusted input (anyone with write access to the topic can
publish): each must have the right opcode, pass its schema and carry the uuid of the
assembly it names, else it is dropped with one log line. A uuid mismatch (a stale clone,
an agent configured for another instance, an impostor) also raises a ``config_error`` event
naming the assembly, at most once per ``IMPOSTOR_EVENT_INTERVAL`` per assembly, so a lost
assembly is never kept "alive" by someone else's beats.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import Future
from functools import cached_property

from lxml import etree

from dpe_agent.cib import rsc_id
from dpe_agent.drivers import DriverError, PowerState
from dpe_agent.echo import BrokerEcho
from dpe_agent.heartbeats import Beat, BeatKind
from dpe_agent.observed import AssemblyStatus
from pcloud import schemas, xmlsafe
from pcloud.addresses import format_addresses
from pcloud.bus import BusError, Message
from pcloud.events import EventType
from pcloud.procstat import host_overloaded
from pcloud.states import AssemblyState as A
from pcloud.states import DeployableState as D
from pcloud.wire import parse_time
from pcloud.wire.check import WireError
from pcloud.wire.heartbeat import Heartbeat, HeartbeatError
from pcloud.wire.results import Report

RECONNECT_GRACE = 5.0
IMPOSTOR_EVENT_INTERVAL = 60.0
NEWS = frozenset({BeatKind.FIRST, BeatKind.RESTARTED})
BOOT_EXTENSION = 2.0    # a boot deadline grows by at most this many boot timeouts
MASS_LOSS_RECHECK = 0.1 # seconds between checks on returning beats during a mass loss
PROGRESS_INTERVAL = 1.0 # seconds between looks at the booting machines' signs of life
BUS_LAG_LIMIT = 0.5     # seconds our own bus thread may be behind before silence is excused
ADDRESSES_KEY = "addresses"         # DPE store: assembly -> its last reported addresses

log = logging.getLogger("dped")


class Detection:
    """Heartbeats, agent reports and reconnects turned into failures (main loop only)."""

    _uuid_index: tuple[object, dict[str, str]] | None = None   # (deployable, name -> uuid)
    _last_check: float = 0.0               # monotonic time of the last heartbeat check
    _progress_checked: float = 0.0         # ... of the last look at booting machines
    _lag_probe: Future | None = None       # the bus thread's lag, being measured
    _lag_asked: float = 0.0                # when that probe was queued
    _bus_lag: float = 0.0                  # the last lag measured
    _boot_progress: dict[str, int] = {}    # booting assembly -> its driver's boot_progress

    @cached_property
    def echo(self) -> BrokerEcho:
        """This DPE's own beats heard back: how far behind the broker is."""
        return BrokerEcho()

    def _on_heartbeat(self, msg: Message) -> None:
        """Bus thread: record a sound beat; the main loop hears only of news and of faults."""
        received = time.monotonic()
        if msg.user_id == self.bus.user:    # this DPE's own heartbeat, heard back
            self.queue.put(("echo", msg.body, time.time(), received))
            return
        beat = self._sound_heartbeat(msg)
        if beat is None:
            self.queue.put(("heartbeat", msg, received))
            return
        seen = self.tracker.beat(beat.assembly, beat.seq, beat.started, received, beat.digest)
        if seen is None:
            return
        asm = beat.assembly
        # Addresses come only after an agent (re)connects or when they change: rare.
        if (seen.kinds & NEWS or asm in self.reprobe_on_beat or self.tracker.mass_loss
                or beat.addresses is not None):
            self.queue.put(("heartbeat_news", beat, seen))

    def _sound_heartbeat(self, msg: Message) -> Heartbeat | None:
        """The heartbeat in ``msg`` if it passes the cheap check and comes from its assembly's
        current agent; None for the main loop to look at closely (bus thread)."""
        if msg.opcode != "heartbeat":
            return None
        try:
            beat = Heartbeat.from_xml(xmlsafe.parse(msg.body, source="heartbeat"))
        except (xmlsafe.XMLError, HeartbeatError):
            return None
        asm = beat.assembly
        if (beat.deployable != self.name or asm is None or asm == "-"
                or msg.user_id != self.logins.expected(asm)
                or beat.uuid != self._expected_uuids().get(asm)):
            return None
        return beat

    def _expected_uuids(self) -> dict[str, str]:
        """Assembly name -> the uuid its agent must send, for the current deployable (a
        reload replaces ``dep``, and so this index)."""
        dep = self.dep
        index = self._uuid_index
        if index is None or index[0] is not dep:
            index = (dep, {a.name: a.uuid or a.name for a in dep.assemblies})
            self._uuid_index = index
        return index[1]

    def _handle_heartbeat(self, msg: Message, received: float) -> None:
        """A beat the bus thread did not accept: the full checks, and their reports."""
        root = self._agent_document(msg, "heartbeat")
        if root is None:
            return
        try:
            beat = Heartbeat.from_xml(root)
        except HeartbeatError as exc:     # the schema let it through
            log.warning("dropped a heartbeat of %s: %s", root.get("assembly"), exc)
            return
        seen = self.tracker.beat(beat.assembly, beat.seq, beat.started, received, beat.digest)
        if seen is not None:
            self._handle_heartbeat_news(beat, seen)

    def _handle_heartbeat_news(self, beat: Heartbeat, seen: Beat) -> None:
        """A recorded beat that says something new: act on it (main loop)."""
        if self.stopping:
            return
        asm = beat.assembly
        status = self.observed.status(asm)
        back = asm in self.reprobe_on_beat
        self.reprobe_on_beat.discard(asm)
        if beat.addresses is not None:
            self._addresses_reported(asm, beat.addresses)
        if BeatKind.FIRST in seen.kinds and status is not AssemblyStatus.LOST:
            self._assembly_online(asm)
        elif BeatKind.RESTARTED in seen.kinds and status is AssemblyStatus.ONLINE:
            log.info("agent of %s restarted: probing its resources again", asm)
            self._reprobe(asm)
        elif back and status is AssemblyStatus.ONLINE:
            log.info("agent of %s beats after the reconnect: probing its resources again", asm)
            self._reprobe(asm)
        now = time.monotonic()
        if self.tracker.mass_loss and now - self._last_check >= MASS_LOSS_RECHECK:
            self._check_heartbeats(now)     # beats coming back end it soon, not per beat: O(N)

    @cached_property
    def addresses(self) -> dict[str, tuple[str, ...]]:
        """Each assembly's last reported IP addresses, kept in the store so that a DPE
        restart raises no change of its own (main loop only: the store is its)."""
        stored = self.store.load_json(ADDRESSES_KEY, {})
        return {asm: tuple(value.split()) for asm, value in stored.items()
                if isinstance(value, str)}

    def _addresses_reported(self, asm: str, new: tuple[str, ...]) -> None:
        """Keep an assembly's addresses; a change is an ``assembly_address_change`` event."""
        old = self.addresses.get(asm)
        if old == new or old is None and not new:
            return
        self.addresses[asm] = new
        self.store.save_json(ADDRESSES_KEY, {a: format_addresses(v)
                                             for a, v in self.addresses.items()})
        log.info("assembly %s addresses: %s -> %s", asm, " ".join(old or ()) or "(none)",
                 " ".join(new) or "(none)")
        self.emit(EventType.ASSEMBLY_ADDRESS_CHANGE, asm, old=" ".join(old or ()),
                  new=" ".join(new))

    def _assembly_online(self, asm: str) -> None:
        """First beat of a booted or adopted assembly: probe its resources."""
        self.boot_gate.online(asm, time.monotonic())
        self.awaiting.discard(asm)
        if self.observed.status(asm) is not AssemblyStatus.ONLINE:
            self.observed.rejoined(asm)
        self.policy.healthy(asm, None, time.time())
        if self.state(asm) not in (A.STARTING, A.RUNNING):   # e.g. adopted after a failure
            self._assembly_state(asm, A.STARTING)
        self._assembly_state(asm, A.RUNNING)
        self._abort("assembly online")

    def _handle_echo(self, body: str, received_wall: float, received: float) -> None:
        """Our own beat came back through the broker: how late (:mod:`dpe_agent.echo`)."""
        try:
            sent = parse_time(Heartbeat.from_xml(xmlsafe.parse(body, source="heartbeat")).time)
        except (xmlsafe.XMLError, HeartbeatError, ValueError):
            return
        delay = received_wall - sent.timestamp()
        excused = self.echo.heard(delay, received)
        if excused:
            log.warning("own heartbeat came back %.1f s late: the broker is behind; heartbeat "
                        "deadlines moved out by %.1f s", delay, excused)
            self.tracker.pause(excused)

    def _bus_behind(self, now: float) -> bool:
        """Is our own bus thread too far behind to judge silence (a starved or backlogged
        DPE, the same rule as for our own main loop's pauses)?

        One probe at a time goes through the bus thread's queue behind whatever it has to
        work through. While one is overdue, no assembly is judged; once it is through, the
        deadlines move out by how much further behind the thread fell, as after a pause.
        """
        probe = self._lag_probe
        if probe is not None and not probe.done():
            return now - self._lag_asked > BUS_LAG_LIMIT
        if probe is not None:
            try:
                lag = probe.result() - self._lag_asked
            except Exception:
                lag = 0.0           # the bus closed or reconnected under it: ask again
            growth, self._bus_lag = lag - self._bus_lag, lag
            if growth > BUS_LAG_LIMIT:
                log.warning("bus thread %.1f s behind: heartbeat deadlines moved out by as "
                            "much", growth)
                self.tracker.pause(growth)
        try:
            self._lag_probe, self._lag_asked = self.bus.lag_probe(), now
        except BusError:
            self._lag_probe = None
        return False

    def _extend_lively_boots(self, now: float) -> None:
        """A booting assembly whose machine shows signs of life (``boot_progress`` of its
        driver moved: a VM's console output, a sandbox's CPU time) is slow, not hung: its
        first beat is awaited longer, by the time that passed, up to the same bound."""
        elapsed = now - self._progress_checked
        progress = getattr(self.driver, "boot_progress", None)
        if elapsed < PROGRESS_INTERVAL or progress is None:
            return
        self._progress_checked = now
        seen: dict[str, int] = {}
        for asm in self.tracker.booting():
            try:
                value = progress(self.spec(asm))
            except DriverError:
                value = None
            if value is not None:
                seen[asm] = value
        lively = [a for a, value in seen.items() if self._boot_progress.get(a, value) != value]
        self._boot_progress = seen
        if lively:
            self.tracker.extend_boots(elapsed, BOOT_EXTENSION, only=lively)

    def _reprobe(self, asm: str) -> None:
        self.observed.rejoined(asm)
        self._abort(f"re-probing {asm}")

    def _check_heartbeats(self, now: float) -> None:
        if not self.bus.connected:
            # Our own link is down: silence proves nothing. Deadlines restart on reconnect.
            self.tracker.grace(now, RECONNECT_GRACE)
            return
        if self._bus_behind(now):
            return            # beats may be waiting on our own bus thread: judge nothing yet
        if self.echo.behind(now):
            return            # ... or in the broker, with our own beat: the same
        last, self._last_check = self._last_check, now
        if last and host_overloaded():
            # A boot on a starved host is slow, not failed: its first beat is awaited longer.
            self.tracker.extend_boots(now - last, BOOT_EXTENSION)
        else:
            self._extend_lively_boots(now)
        self._admit_boots()
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

    def _on_reconnect(self) -> None:
        """Dispatcher thread: count at once (action results check it), act on the loop."""
        self.reconnects += 1
        self.queue.put(("reconnect",))

    def _handle_reconnect(self) -> None:
        """Each online assembly is re-probed on its agent's next beat: before that its agent
        may not be connected yet (its queue may not even exist on a restarted broker), and
        an unanswered probe would pass for a failed resource."""
        log.info("bus reconnected: grace period for agents, re-probing each on its next beat")
        self.tracker.grace(time.monotonic(), RECONNECT_GRACE)
        self.echo.forget()
        self.reprobe_on_beat = {asm for asm in self._assemblies()
                                if self.observed.status(asm) is AssemblyStatus.ONLINE}
        self._abort("bus reconnected")

    def _on_report(self, msg: Message) -> None:
        self.queue.put(("report", msg, time.time()))

    def _handle_report(self, msg: Message, received: float) -> None:
        root = self._agent_document(msg, "report")
        if root is None:
            return
        try:
            report = Report.from_xml(root)
        except WireError as exc:                # the schema let it through
            log.warning("dropped a report of %s: %s", root.get("assembly"), exc)
            return
        asm, svc, rc = report.assembly, report.resource, report.rc
        if (self.stopping or self._service(asm, svc) is None
                or self.observed.status(asm) is not AssemblyStatus.ONLINE):
            return
        hist = self.observed.resource(asm, rsc_id(asm, svc))
        if hist is None or not hist.monitors:
            return
        interval = report.interval or 0
        if interval not in hist.monitors:
            interval = next(iter(hist.monitors))
        previous = hist.monitors[interval]
        if previous.rc == rc:
            return
        self.observed.report_monitor(asm, rsc_id(asm, svc), interval, rc, now=received)
        if rc == previous.expected_rc:
            return
        reason = report.reason or f"monitor returned rc {rc}"
        self._resource_failed(asm, svc, reason, _report_time(report.time, received))

    def _agent_document(self, msg: Message, kind: str) -> etree._Element | None:
        """The heartbeat or report in ``msg`` if it is fit to act on, else None (logged)."""
        if msg.opcode != kind:
            log.warning("dropped a message with opcode %r on the %s topic (%s)", msg.opcode,
                        kind, msg.address)
            return None
        try:
            root = xmlsafe.parse(msg.body, source=kind)
            schemas.validate(root, kind)
        except xmlsafe.XMLError as exc:
            log.warning("dropped an invalid %s: %s", kind, exc)
            return None
        asm = root.get("assembly")
        if root.get("deployable") != self.name or asm in (None, "-"):
            return None                  # another deployable's, or this DPE's own heartbeat
        try:
            expected = self.dep.assembly(asm).uuid or asm
        except KeyError:
            log.info("dropped a %s of assembly %s, which %s does not have", kind, asm,
                     self.name)
            return None
        login = self.logins.expected(asm)
        if msg.user_id != login:
            self._wrong_login(kind, asm, msg.user_id, login)
            return None
        uuid = root.get("uuid")
        if uuid != expected:
            self._impostor(kind, asm, uuid, expected)
            return None
        return root

    def _wrong_login(self, kind: str, asm: str, user: str | None, login: str | None) -> None:
        """Logged once per sender: a fenced copy, a stale boot, or someone else entirely."""
        if self.wrong_logins.seen(f"{asm}:{user}"):
            return
        log.warning("dropped a %s of assembly %s from %r: only its current agent login %s "
                    "may send it", kind, asm, user, login or "(none: not booted by this DPE)")

    def _impostor(self, kind: str, asm: str, uuid: str | None, expected: str) -> None:
        """One log line per dropped message, one config_error per assembly per interval."""
        reason = (f"{kind} from an agent with uuid {uuid or '(none)'}, expected {expected}: "
                  "ignored")
        log.warning("assembly %s: %s", asm, reason)
        now = time.monotonic()
        last = self.impostor_events.get(asm)
        if last is not None and now - last < IMPOSTOR_EVENT_INTERVAL:
            return
        self.impostor_events[asm] = now
        self.emit(EventType.CONFIG_ERROR, asm, reason=reason)


def _report_time(text: str, received: float) -> float:
    """The agent's own detection time when plausible (same host clock), else receipt."""
    if text:
        try:
            when = parse_time(text).timestamp()
        except ValueError:
            return received
        if received - 60 <= when <= received + 1:
            return min(when, received)
    return received


