"""One DPE process per deployable: spawn it, watch it, restart it, re-adopt it.

The supervisor's loop compares what the store wants (deployables whose desired state is
``running``) with what runs. A DPE is watched two ways: its process (``waitpid`` for our own
children, ``/proc`` for DPEs adopted after a CPE restart) and its heartbeats on
``pcloud.heartbeat.<dep>.-``. A dead or silent DPE is killed and started again with capped
exponential back-off, unless it exited with ``EXIT_CONFIG`` (:mod:`pcloud.exitcodes`): that
configuration can never start, so the deployable is marked ``failed`` with the reason (a
``deployable_state_change`` event) and its DPE is not started again until the document
changes (a reload) or the deployable is stopped and started. DPEs run in their own session so
they outlive the CPE; a restarted CPE finds them again through their pid file and their
heartbeats.

The CPE never opens a DPE's database: a DPE learns the ``seq`` floor of its events from its
command line (``--seq-floor``, the highest seq in the CPE's log).

The clock is injected (``tick(now)``) so that the loop is testable without real time.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lxml import etree

from cpe_agent.store import DESIRED_RUNNING, Store, StoredDeployable, StoredEvent, StoreError
from pcloud import procstat
from pcloud.broker_admin import BrokerAdminError
from pcloud.bus.eventloop import HEARTBEAT
from pcloud.credentials import format_credentials, scrubbed_environ, without_credentials
from pcloud.events import Event, format_time
from pcloud.exitcodes import EXIT_CONFIG, describe
from pcloud.fsutil import private_dir, write_atomic
from pcloud.identity import dpe_spec

log = logging.getLogger("pcloud.cpe.supervisor")

FIRST_HEARTBEAT_GRACE = 20.0
STARVED_SILENCE = 60.0  # seconds a silent DPE that still computes waits on a starved host
HEARTBEAT_MISSES = 3
# A frozen broker silences every DPE before our own connection notices (proton's idle
# timeout): a DPE is never judged silent over a shorter span than that detection takes.
OUTAGE_DETECTION = 1.5 * HEARTBEAT
BACKOFF_CAP = 30.0
STABLE_AFTER = 30.0
STOP_RESEND = 5.0
FIRST_STOP_DELAY = 1.0
STOP_ATTEMPTS = 3
SUPERVISOR_STALL = 2.0     # seconds of oversleep that mean this process was paused
REASON_TAIL = 4096         # bytes of dped.log searched for why a DPE could not start


def default_dped_command() -> list[str]:
    """``dped`` beside this interpreter (a virtualenv), on PATH, or run as a module."""
    beside = Path(sys.executable).parent / "dped"
    if beside.exists():
        return [str(beside)]
    found = shutil.which("dped")
    return [found] if found else [sys.executable, "-m", "dpe_agent.cli"]


def dpe_dir(state_dir: Path, name: str) -> Path:
    return state_dir / "dpe" / name


def backoff(failures: int) -> float:
    """Delay before the next start after ``failures`` consecutive deaths: 0, 1, 2, 4 … 30 s."""
    if failures <= 1:
        return 0.0
    return min(BACKOFF_CAP, 2.0 ** (failures - 2))


def _is_dped_of(pid: int, name: str) -> bool:
    """Whether ``pid`` is a live DPE managing deployable ``name`` (pids get reused)."""
    if not procstat.alive(pid):
        return False
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            argv = handle.read().decode("utf-8", errors="replace").split("\0")
    except OSError:
        return False
    joined = " ".join(argv)
    return ("dped" in joined or "dpe_agent" in joined) and f"/dpe/{name}/" in joined


@dataclass
class DpeProcess:
    """What the supervisor knows of one deployable's DPE."""

    name: str
    pid: int | None = None
    popen: subprocess.Popen[bytes] | None = None
    since: float = 0.0
    last_heartbeat: float | None = None
    heartbeat_interval: float = 1.0
    started_stamp: str | None = None
    failures: int = 0
    not_before: float = 0.0
    last_stop_request: float = 0.0
    restarts: int = 0
    revived: int = 0                   # spawns after a death, a silence or a failed spawn
    log_offset: int = 0                # size of dped.log when this DPE was spawned
    gave_up: str | None = None         # why its configuration cannot start (EXIT_CONFIG)
    gave_up_document: str | None = None   # ... with this document: a new one is tried
    cpu_ticks: int | None = None       # its process's CPU time at the last look
    cpu_moved_at: float | None = None  # when that last changed

    def alive(self) -> bool:
        if self.pid is None:
            return False
        if self.popen is not None:
            return self.popen.poll() is None
        return procstat.alive(self.pid)


@dataclass(frozen=True)
class DpeWatch:
    """One DPE as the supervisor sees it (read by cpe_agent.metrics at scrape time)."""

    deployable: str
    revived: int                       # started again after a death, silence or failed spawn
    heartbeat_age: float | None        # seconds since its last heartbeat (None: none yet)
    heartbeat_interval: float
    alive: bool


class Supervisor:
    """Keeps one DPE per running deployable; thread-safe, driven by ``tick``."""

    def __init__(self, store: Store, state_dir: Path, broker_url: str,
                 dped_command: list[str] | None = None,
                 request_stop: Callable[[str], None] | None = None,
                 clock: Callable[[], float] = time.monotonic, admin=None,
                 cpe_user: str | None = None) -> None:
        self.store = store
        self.state_dir = state_dir
        self.broker_url = broker_url
        self.dped_command = dped_command or default_dped_command()
        self.request_stop = request_stop
        self.clock = clock
        self.admin = admin
        self.cpe_user = cpe_user
        self.requested_by: dict[str, str] = {}     # deployable -> who started it
        self._dpe_logins: dict[str, str] = {}      # deployable -> its DPE's last login
        self._lock = threading.RLock()
        self._dpes: dict[str, DpeProcess] = {}
        self._heartbeat_watch_from = clock()
        self.bus_connected: Callable[[], bool] = lambda: True   # set by the daemon
        self.host_overloaded: Callable[[], bool] = procstat.host_overloaded
        # (deployable, seconds a heartbeat came later than its interval): metrics
        self.on_heartbeat_gap: Callable[[str, float], None] | None = None
        self._bus_down = False       # the bus was seen down and the watch not yet restarted
        # Number, store and publish an event the CPE raises (the service's raise_event, set
        # by the daemon); without it the event is only numbered and stored.
        self.raise_event: Callable[[etree._Element], None] = self._store_event
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # --- files -------------------------------------------------------------------------

    def document_path(self, name: str) -> Path:
        return dpe_dir(self.state_dir, name) / "deployable.xml"

    def write_document(self, name: str, document: str) -> None:
        """Hand a (new) document to the DPE through its file, atomically."""
        write_atomic(self.document_path(name), document)

    def _pid_from_file(self, name: str) -> int | None:
        try:
            text = (dpe_dir(self.state_dir, name) / "dped.pid").read_text().strip()
            return int(text.split()[0])
        except (OSError, ValueError, IndexError):
            return None

    # --- event numbering ---------------------------------------------------------------

    def number_event(self, name: str, build: Callable[[int], StoredEvent]) -> StoredEvent:
        """Number and persist an event the CPE raises while no DPE can number it.

        ``seq`` is one sequence per deployable whoever numbers it: above the CPE's log (which
        holds every event of the DPE's it received or back-filled), and the next DPE is
        started with ``--seq-floor`` at the top of that log, so it numbers above these.
        """
        with self._lock:
            return self.store.add_event_next_seq(name, build)

    def _store_event(self, request: etree._Element) -> None:
        """``raise_event`` without a bus: number and store only."""
        draft = Event.from_xml(request)
        self.number_event(draft.deployable, lambda seq: _stored_event(draft.with_seq(seq)))

    # --- inputs from the bus -----------------------------------------------------------

    def heartbeat(self, name: str, interval: float, started: str | None) -> bool:
        """A DPE heartbeat arrived (dispatcher thread); True for a DPE's first one."""
        with self._lock:
            dpe = self._dpes.get(name)
            if dpe is None:
                return False
            first = dpe.last_heartbeat is None or (started is not None
                                                   and started != dpe.started_stamp)
            dpe.started_stamp = started or dpe.started_stamp
            previous, dpe.last_heartbeat = dpe.last_heartbeat, self.clock()
            if interval > 0:
                dpe.heartbeat_interval = interval
            if previous is not None and not first and self.on_heartbeat_gap is not None:
                self.on_heartbeat_gap(name, dpe.last_heartbeat - previous - interval)
            return first

    def bus_reconnected(self) -> None:
        """Heartbeats missed while the bus was down say nothing about the DPEs: start over."""
        with self._lock:
            self._heartbeat_watch_from = self.clock()
            for dpe in self._dpes.values():
                dpe.last_heartbeat = None
                dpe.since = max(dpe.since, self._heartbeat_watch_from)

    def is_running(self, name: str) -> bool:
        with self._lock:
            dpe = self._dpes.get(name)
            return dpe is not None and dpe.alive()

    def is_answering(self, name: str) -> bool:
        """Alive and heartbeating: worth a method call."""
        with self._lock:
            dpe = self._dpes.get(name)
            return dpe is not None and dpe.alive() and dpe.last_heartbeat is not None

    def pid(self, name: str) -> int | None:
        with self._lock:
            dpe = self._dpes.get(name)
            return dpe.pid if dpe is not None and dpe.alive() else None

    def watch(self) -> list[DpeWatch]:
        """What is known of each DPE now (for metrics)."""
        now = self.clock()
        with self._lock:
            return [DpeWatch(d.name, d.revived, None if d.last_heartbeat is None
                             else now - d.last_heartbeat, d.heartbeat_interval, d.alive())
                    for d in self._dpes.values()]

    def delete(self, name: str, drop_stored: Callable[[], None]) -> None:
        """Forget a stopped deployable: ``drop_stored`` (the store's part), then its DPE
        directory. Under the supervisor's lock, so no tick starts a DPE for it meanwhile;
        StoreError (from ``drop_stored``) when it is not stopped, and nothing is removed."""
        with self._lock:
            dpe = self._dpes.get(name)
            pid = self._pid_from_file(name)
            if (dpe is not None and dpe.alive()) or (pid is not None and _is_dped_of(pid, name)):
                raise StoreError(f"the DPE of {name!r} is still finishing the stop: try again "
                                 "in a moment")
            drop_stored()
            self._dpes.pop(name, None)
            shutil.rmtree(dpe_dir(self.state_dir, name), ignore_errors=True)

    def stop_requested(self, name: str) -> None:
        with self._lock:
            dpe = self._dpes.get(name)
            if dpe is not None:
                dpe.last_stop_request = self.clock()

    # --- the loop ----------------------------------------------------------------------

    def start(self, period: float = 0.2) -> None:
        self.adopt_all()
        self._thread = threading.Thread(target=self._run, args=(period,), name="supervisor",
                                        daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop watching; the DPEs keep running (they are the deployables' keepers)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)

    def _run(self, period: float) -> None:
        last = self.clock()
        while not self._stop.wait(period):
            now = self.clock()
            if now - last > period + SUPERVISOR_STALL:
                self._excuse_stall(now - last - period)
            last = now
            try:
                self.tick(now)
            except Exception:
                log.exception("supervisor tick failed")

    def _excuse_stall(self, overslept: float) -> None:
        """After the CPE itself was paused, DPE silence proves nothing: restart the watch.

        Their heartbeats are still queued in the broker; judging them now would kill healthy
        DPEs for our own pause (the DPE does the same for its agents).
        """
        log.warning("supervisor stalled %.1f s (process paused or starved): DPE heartbeat "
                    "watch restarted", overslept)
        with self._lock:
            self._heartbeat_watch_from = self.clock()

    def adopt_all(self) -> None:
        """After a CPE (re)start: find the DPEs that still run, before starting any."""
        with self._lock:
            for stored in self.store.list():
                pid = self._pid_from_file(stored.name)
                if pid is not None and _is_dped_of(pid, stored.name):
                    log.info("re-adopting the DPE of %s (pid %d)", stored.name, pid)
                    self._dpes[stored.name] = DpeProcess(stored.name, pid=pid,
                                                         since=self.clock())

    def tick(self, now: float | None = None) -> None:
        """Bring what runs in line with what the store wants."""
        now = self.clock() if now is None else now
        with self._lock:
            self._watch_bus()
            wanted = {d.name: d for d in self.store.list()}
            for name, stored in wanted.items():
                dpe = self._dpes.setdefault(name, DpeProcess(name))
                if stored.desired == DESIRED_RUNNING:
                    self._keep_running(dpe, stored, now)
                else:
                    self._let_stop(dpe, stored.state, now)
            for name in [n for n in self._dpes if n not in wanted]:
                del self._dpes[name]

    def _keep_running(self, dpe: DpeProcess, stored: StoredDeployable, now: float) -> None:
        self._note_cpu(dpe, now)
        if dpe.pid is not None and not dpe.alive():
            code = dpe.popen.returncode if dpe.popen is not None else None
            if code == EXIT_CONFIG:
                self._give_up(dpe, stored, code)
                return
            log.warning("DPE of %s (pid %d) died (%s)", dpe.name, dpe.pid, describe(code))
            self._forget(dpe, now)
        elif dpe.pid is not None and self._silent(dpe, now):
            log.warning("DPE of %s (pid %d) stopped heartbeating: killing it", dpe.name,
                        dpe.pid)
            self._kill(dpe)
            self._forget(dpe, now)
        if dpe.pid is None and dpe.gave_up is not None:
            if stored.document == dpe.gave_up_document:
                return                          # it would only fail again
            log.info("deployable %s has a new document: starting its DPE again", dpe.name)
            dpe.gave_up = dpe.gave_up_document = None
        if dpe.pid is None and now >= dpe.not_before:
            pid = self._pid_from_file(dpe.name)
            if pid is not None and _is_dped_of(pid, dpe.name):
                dpe.pid, dpe.popen, dpe.since = pid, None, now
                return
            self._spawn(dpe, now)
        elif (dpe.pid is not None and dpe.failures and dpe.last_heartbeat is not None
              and now - dpe.since > STABLE_AFTER):
            dpe.failures = 0

    def _let_stop(self, dpe: DpeProcess, state: str, now: float) -> None:
        """Desired ``stopped``: the DPE stops everything and exits; no DPE, no stop.

        A stop that finds its DPE dead starts one (it adopts the running sandboxes) so that
        the stop really happens, and gives up after a few failed attempts.
        """
        if dpe.pid is None:
            if state == "stopped":
                dpe.gave_up = dpe.gave_up_document = None
                return
            if dpe.gave_up is not None:
                log.info("DPE of %s cannot start this configuration: marking it stopped",
                         dpe.name)
                dpe.gave_up = dpe.gave_up_document = None
                self.store.set_state(dpe.name, "stopped")
            elif dpe.failures >= STOP_ATTEMPTS:
                log.error("DPE of %s cannot be started to stop it: marking it stopped",
                          dpe.name)
                self.store.set_state(dpe.name, "stopped")
            elif now >= dpe.not_before:
                self._spawn(dpe, now)
                dpe.last_stop_request = now - STOP_RESEND + FIRST_STOP_DELAY
            return
        if not dpe.alive():
            code = dpe.popen.returncode if dpe.popen is not None else 0
            if code == 0:
                log.info("DPE of %s exited after stopping", dpe.name)
                dpe.pid = dpe.popen = None
                dpe.last_heartbeat = None
                dpe.failures = 0
                self.store.set_state(dpe.name, "stopped")
            elif code == EXIT_CONFIG:
                log.error("DPE of %s cannot start this configuration (%s): marking it "
                          "stopped", dpe.name, self._why_not(dpe) or describe(code))
                dpe.pid = dpe.popen = None
                dpe.last_heartbeat = None
                dpe.failures = 0
                self.store.set_state(dpe.name, "stopped")
            else:
                log.warning("DPE of %s died while stopping (%s)", dpe.name, describe(code))
                self._forget(dpe, now)
        elif self.request_stop is not None and now - dpe.last_stop_request > STOP_RESEND:
            dpe.last_stop_request = now
            threading.Thread(target=self._safe_request_stop, args=(dpe.name,),
                             daemon=True).start()

    def _safe_request_stop(self, name: str) -> None:
        try:
            assert self.request_stop is not None
            self.request_stop(name)
        except Exception as exc:
            log.warning("stop request to the DPE of %s failed: %s", name, exc)

    def _watch_bus(self) -> None:
        """Restart the heartbeat watch as soon as the bus is seen back after being seen down.

        ``bus_reconnected`` runs on the bus's dispatcher thread, after the callbacks queued
        before it: the bus counts as connected before then, and a tick in between would judge
        the DPEs on heartbeats from before the outage and kill them all (what a soak saw
        after a broker restart). The callback stays for outages shorter than a tick.
        """
        if not self.bus_connected():
            self._bus_down = True
        elif self._bus_down:
            self._bus_down = False
            self.bus_reconnected()

    def _silent(self, dpe: DpeProcess, now: float) -> bool:
        """No heartbeat for too long; never while our own broker connection is down (the
        silence proves nothing: ``bus_reconnected`` restarts the watch)."""
        if self._bus_down or not self.bus_connected():
            return False
        if now - self._heartbeat_watch_from <= FIRST_HEARTBEAT_GRACE:
            # Just after our own (re)connect the DPEs are reconnecting too, each on its own
            # back-off and, on a busy host, late: every one gets a new DPE's grace.
            return False
        limit = max(dpe.heartbeat_interval * HEARTBEAT_MISSES + 0.5, OUTAGE_DETECTION)
        if dpe.last_heartbeat is None:
            waited = now - max(dpe.since, self._heartbeat_watch_from)
            if waited <= FIRST_HEARTBEAT_GRACE:
                return False
            return not (waited <= FIRST_HEARTBEAT_GRACE + STARVED_SILENCE
                        and self._starved(dpe, now, limit))
        silent = now - dpe.last_heartbeat
        if silent <= limit or now - self._heartbeat_watch_from <= limit:
            return False
        return not (silent <= STARVED_SILENCE and self._starved(dpe, now, limit))

    def _starved(self, dpe: DpeProcess, now: float, limit: float) -> bool:
        """Silent because starved, not hung: the host is overloaded and the DPE's process
        computed within the heartbeat limit. Killing it would only add a DPE start to the
        storm (issue 13: at 2,000 assemblies the CPE killed starved DPEs one after the
        other). ``STARVED_SILENCE`` bounds the wait for a DPE that spins without beating."""
        return (dpe.cpu_moved_at is not None and now - dpe.cpu_moved_at <= limit
                and self.host_overloaded())

    def _note_cpu(self, dpe: DpeProcess, now: float) -> None:
        ticks = procstat.cpu_ticks(dpe.pid) if dpe.pid is not None else None
        if ticks is not None and ticks != dpe.cpu_ticks:
            dpe.cpu_ticks, dpe.cpu_moved_at = ticks, now

    def _give_up(self, dpe: DpeProcess, stored: StoredDeployable, code: int) -> None:
        """The DPE exited with ``EXIT_CONFIG``: ``failed`` with the reason, no restart."""
        why = self._why_not(dpe)
        reason = f"the DPE cannot start this configuration ({describe(code)})" + \
            (f": {why}" if why else "")
        log.error("deployable %s failed: %s; its DPE is not restarted until the document "
                  "changes or the deployable is stopped and started again", dpe.name, reason)
        dpe.pid = dpe.popen = None
        dpe.last_heartbeat = dpe.started_stamp = None
        dpe.failures = 0
        dpe.gave_up, dpe.gave_up_document = reason, stored.document
        self.store.set_state(dpe.name, "failed")
        event = etree.Element("event", type="deployable_state_change", deployable=dpe.name,
                              state="failed", reason=reason)
        if stored.state and stored.state != "failed":
            event.set("previous", stored.state)
        # Off the supervisor's lock: publishing waits for the bus.
        threading.Thread(target=self._safe_raise, args=(event,), name=f"failed-{dpe.name}",
                         daemon=True).start()

    def _safe_raise(self, event: etree._Element) -> None:
        try:
            self.raise_event(event)
        except Exception as exc:
            log.warning("could not raise the %s event of %s: %s", event.get("type"),
                        event.get("deployable"), exc)

    def _why_not(self, dpe: DpeProcess) -> str | None:
        """The last line the DPE wrote to its log since it was spawned (its error)."""
        path = dpe_dir(self.state_dir, dpe.name) / "dped.log"
        try:
            with open(path, "rb") as handle:
                size = handle.seek(0, os.SEEK_END)
                handle.seek(max(dpe.log_offset, size - REASON_TAIL))
                tail = handle.read().decode("utf-8", errors="replace")
        except OSError:
            return None
        lines = [line.strip() for line in tail.splitlines() if line.strip()]
        return lines[-1][:1024] if lines else None

    def _forget(self, dpe: DpeProcess, now: float) -> None:
        dpe.pid = None
        dpe.popen = None
        dpe.last_heartbeat = None
        dpe.started_stamp = None
        dpe.failures += 1
        dpe.not_before = now + backoff(dpe.failures)
        if dpe.failures > 1:
            log.info("next start of the DPE of %s in %.0f s", dpe.name, backoff(dpe.failures))

    def _kill(self, dpe: DpeProcess) -> None:
        if dpe.pid is None:
            return
        try:
            os.kill(dpe.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        if dpe.popen is not None:
            try:
                dpe.popen.wait(timeout=5.0)
            except subprocess.TimeoutExpired:
                log.error("DPE pid %d does not die", dpe.pid)

    def _spawn(self, dpe: DpeProcess, now: float) -> None:
        stored = self.store.get(dpe.name)
        if stored is None:
            return
        directory = private_dir(dpe_dir(self.state_dir, dpe.name))
        path = self.document_path(dpe.name)
        if not path.exists() or path.read_text(encoding="utf-8") != stored.document:
            self.write_document(dpe.name, stored.document)
        try:
            secret = self._dpe_credentials(dpe.name)
        except Exception as exc:
            log.error("cannot give the DPE of %s a broker identity: %s", dpe.name, exc)
            self._forget(dpe, now)
            return
        argv = [*self.dped_command, "--deployable", str(path),
                "--state-dir", str(self.state_dir), "--managed",
                "--seq-floor", str(self.store.max_seq(dpe.name))]
        requested_by = self.requested_by.pop(dpe.name, None)
        if requested_by:
            argv += ["--requested-by", requested_by]
        env = scrubbed_environ(PCLOUD_BROKER_URL=without_credentials(self.broker_url),
                               PCLOUD_STATE_DIR=str(self.state_dir))
        read_end, write_end = os.pipe()
        argv += ["--credentials-fd", str(read_end)]
        try:
            os.write(write_end, secret.encode())
            os.close(write_end)
            with open(directory / "dped.log", "ab") as logfile:
                dpe.log_offset = logfile.seek(0, os.SEEK_END)
                popen = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=logfile,
                                         stderr=subprocess.STDOUT, env=env, close_fds=True,
                                         pass_fds=(read_end,), start_new_session=True)
        finally:
            os.close(read_end)
        dpe.pid, dpe.popen, dpe.since = popen.pid, popen, now
        dpe.last_heartbeat = None
        dpe.restarts += 1
        dpe.revived += 1 if dpe.failures else 0
        log.info("started the DPE of %s (pid %d)", dpe.name, popen.pid)

    def _dpe_credentials(self, name: str) -> str:
        """A fresh password for ``dpe.<name>`` at every spawn (the dead DPE's is void), handed
        over through a pipe: never in a file, an environment or a command line. While the
        broker is down no password can change, so the last one (still the broker's) is
        handed over again: a DPE started during an outage waits for the broker with it."""
        if self.admin is None:
            raise RuntimeError("this CPE has no broker-administration seam")
        spec = dpe_spec(name)
        try:
            self.admin.put_users([spec])
        except BrokerAdminError as exc:
            last = self._dpe_logins.get(name)
            if last is None:
                raise
            log.warning("cannot give the DPE of %s a new password (%s): it keeps its last",
                        name, exc)
            return last
        secret = format_credentials(spec.credentials, cpe_user=self.cpe_user or "")
        self._dpe_logins[name] = secret
        return secret

    def reap(self) -> None:
        """Collect exited children so no zombie outlives a stop."""
        with self._lock:
            for dpe in self._dpes.values():
                if dpe.popen is not None:
                    dpe.popen.poll()


def _stored_event(event: Event) -> StoredEvent:
    assert event.seq is not None
    return StoredEvent(event.deployable, event.seq, event.type.value, format_time(event.time),
                       event.to_xml())
