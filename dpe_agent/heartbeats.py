"""Heartbeat watching of a deployable's assemblies, as pure logic with the clock injected.

Each assembly's guest agent beats every ``interval`` seconds; it is *lost* once it has been
silent for ``interval × misses``. When most assemblies go silent together (at least two, and
at least half of those being watched), the likelier cause is the broker or the network, not N
simultaneous crashes: that is reported once as a *mass loss*, nothing is declared lost, and the
watch waits for beats to come back. Assemblies still silent one timeout after the others are
back are then lost individually. After a bus reconnect every deadline gets a grace period, so
agents have time to reconnect too; time this process spent frozen counts as nobody's silence.

A beat costs O(1) and a check O(log N) (issue 13: a 1,000-assembly DPE gets 1,000 beats a
second): deadlines sit in a heap with lazy deletion. A later beat only moves its watch's
deadline later, so the heap keeps one entry per watch that may be early; an entry found
early at the top is pushed again at its watch's true deadline. What can move a deadline
earlier (``expect``, ``restart_watch``, a first beat: ``interval × misses`` is shorter than
the boot timeout, a beat taken during a pause, ``grace``) pushes a new entry with a new
version, so the old one is dropped when it surfaces. Beats are recorded on the bus thread
(a beat that changes nothing never wakes the DPE's main loop), everything else on the main
loop: one lock guards it all.

Times are monotonic seconds supplied by the caller.
"""

from __future__ import annotations

import enum
import heapq
import itertools
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field


class Liveness(enum.StrEnum):
    BOOTING = "booting"        # expected, no beat yet
    ALIVE = "alive"
    LOST = "lost"              # declared lost (to be fenced by the DPE)


class BeatKind(enum.StrEnum):
    FIRST = "first"            # first beat of a booting or lost assembly: it is online
    RESTARTED = "restarted"    # the agent restarted (its ``started`` changed)
    GAP = "gap"                # beats were missed (seq jumped) but not enough to be lost
    DRIFT = "drift"            # the agent's resource digest changed
    STALE = "stale"            # out of order or duplicate: ignored


@dataclass
class Watch:
    """What is known about one assembly's heartbeats."""

    interval: float
    misses: int
    boot_timeout: float
    since: float
    liveness: Liveness = Liveness.BOOTING
    last: float | None = None
    seq: int | None = None
    started: str | None = None
    digest: str | None = None
    gaps: int = 0
    restarts: int = 0
    grace_until: float = 0.0
    version: int = 0           # of its one valid heap entry
    extended: float = 0.0      # seconds its boot deadline was extended (a starved host)

    @property
    def timeout(self) -> float:
        return self.interval * self.misses

    def deadline(self) -> float:
        """When this assembly becomes lost unless it beats."""
        base = self.since + self.boot_timeout if self.last is None else self.last + self.timeout
        return max(base, self.grace_until)


@dataclass(frozen=True)
class Beat:
    """What one heartbeat told about its assembly (zero or more kinds)."""

    assembly: str
    kinds: frozenset[BeatKind]
    missed: int = 0


@dataclass(frozen=True)
class Verdict:
    """Result of a check: assemblies newly lost, and whether a mass loss started or ended."""

    lost: tuple[str, ...] = ()
    mass_loss_started: tuple[str, ...] = ()
    mass_loss_ended: bool = False


@dataclass
class HeartbeatTracker:
    """Heartbeat state of all watched assemblies of one deployable."""

    mass_fraction: float = 0.5
    mass_minimum: int = 2
    watches: dict[str, Watch] = field(default_factory=dict)
    mass_loss: bool = False
    _heap: list[tuple[float, str, int]] = field(default_factory=list, repr=False)
    _versions: itertools.count = field(default_factory=itertools.count, repr=False)
    _lock: threading.RLock = field(default_factory=threading.RLock, repr=False)

    def expect(self, assembly: str, interval: float, misses: int, now: float,
               boot_timeout: float | None = None) -> None:
        """Watch an assembly that is booting (or being adopted): it must beat by its deadline."""
        boot = boot_timeout if boot_timeout is not None else max(30.0, interval * misses)
        with self._lock:
            watch = Watch(interval, misses, boot, since=now)
            self.watches[assembly] = watch
            self._push(assembly, watch)

    def forget(self, assembly: str) -> None:
        with self._lock:
            self.watches.pop(assembly, None)      # its heap entry is dropped when it surfaces

    def _push(self, assembly: str, watch: Watch) -> None:
        """Give the watch a new heap entry; any older one is obsolete from now on."""
        watch.version = next(self._versions)
        heapq.heappush(self._heap, (watch.deadline(), assembly, watch.version))

    def _valid(self, entry: tuple[float, str, int]) -> Watch | None:
        """The watch an entry stands for, or None when the entry is obsolete."""
        watch = self.watches.get(entry[1])
        if watch is None or watch.version != entry[2] or watch.liveness is Liveness.LOST:
            return None
        return watch

    def _settle(self) -> None:
        """Make the heap's top entry exact: drop obsolete ones, push early ones again."""
        heap = self._heap
        while heap:
            watch = self._valid(heap[0])
            if watch is None:
                heapq.heappop(heap)
                continue
            deadline = watch.deadline()
            if deadline <= heap[0][0]:
                return
            heapq.heapreplace(heap, (deadline, heap[0][1], watch.version))

    def _due(self, now: float) -> list[str]:
        """Watches whose deadline has come, taken off the heap (sorted by name)."""
        due = []
        while True:
            self._settle()
            if not self._heap or self._heap[0][0] > now:
                return sorted(due)
            due.append(heapq.heappop(self._heap)[1])

    def liveness(self, assembly: str) -> Liveness | None:
        watch = self.watches.get(assembly)
        return watch.liveness if watch else None

    def beat(self, assembly: str, seq: int, started: str, now: float,
             digest: str | None = None) -> Beat | None:
        """Record one heartbeat; None when the assembly is not watched."""
        with self._lock:
            return self._beat(assembly, seq, started, now, digest)

    def _beat(self, assembly: str, seq: int, started: str, now: float,
              digest: str | None) -> Beat | None:
        watch = self.watches.get(assembly)
        if watch is None:
            return None
        kinds: set[BeatKind] = set()
        missed = 0
        if watch.started is not None and started != watch.started:
            watch.restarts += 1
            kinds.add(BeatKind.RESTARTED)
        elif watch.seq is not None:
            if seq <= watch.seq:
                return Beat(assembly, frozenset({BeatKind.STALE}))
            missed = seq - watch.seq - 1
            if missed > 0:
                watch.gaps += 1
                kinds.add(BeatKind.GAP)
        if watch.liveness is not Liveness.ALIVE:
            kinds.add(BeatKind.FIRST)
        # A pause moved ``last`` forward by the stall, maybe past a beat taken meanwhile.
        earlier = BeatKind.FIRST in kinds or watch.last is None or now < watch.last
        if digest is not None and watch.digest is not None and digest != watch.digest:
            kinds.add(BeatKind.DRIFT)
        watch.liveness = Liveness.ALIVE
        watch.last, watch.seq, watch.started = now, seq, started
        if digest is not None:
            watch.digest = digest
        if earlier:       # e.g. from the boot deadline (or none: lost) to interval × misses
            self._push(assembly, watch)
        return Beat(assembly, frozenset(kinds), missed)

    def grace(self, now: float, seconds: float | None = None) -> None:
        """Push every deadline out (after a bus reconnect): agents need time to reconnect."""
        with self._lock:
            for watch in self.watches.values():
                watch.grace_until = now + (seconds if seconds is not None else watch.timeout)
            self._rebuild()                 # a shorter grace than the last moves some earlier

    def pause(self, seconds: float) -> None:
        """This process was frozen (SIGSTOP, a starved host) for ``seconds``: no beat could
        be received meanwhile, so that time counts as nobody's silence. Every reference
        moves forward by it: silence is judged only on beats that could have arrived."""
        with self._lock:
            for watch in self.watches.values():
                watch.since += seconds
                if watch.last is not None:
                    watch.last += seconds
                if watch.grace_until:
                    watch.grace_until += seconds
            # Every deadline moved by the same amount: the heap's order holds.
            self._heap = [(due + seconds, a, v) for due, a, v in self._heap]

    def extend_boots(self, seconds: float, most: float,
                     only: Iterable[str] | None = None) -> None:
        """Booting assemblies' deadlines move out by ``seconds``, up to ``most`` boot
        timeouts in all: the host is starved (all of them), or these (``only``) show signs
        of life. A boot that is merely slow is not fenced (and rebooted, which would feed a
        storm), while a hung one still is in the end."""
        with self._lock:
            names = self.watches if only is None else [a for a in only if a in self.watches]
            for assembly in names:
                watch = self.watches[assembly]
                if watch.liveness is Liveness.BOOTING and watch.last is None:
                    step = min(seconds, watch.boot_timeout * most - watch.extended)
                    if step > 0:
                        watch.since += step
                        watch.extended += step

    def booting(self) -> list[str]:
        """Assemblies awaiting their first beat."""
        with self._lock:
            return [a for a, w in self.watches.items()
                    if w.liveness is Liveness.BOOTING and w.last is None]

    def restart_watch(self, assembly: str, now: float,
                      boot_timeout: float | None = None) -> None:
        """The assembly is being (re)booted: wait for its first beat again.

        ``boot_timeout`` replaces the watch's: an adopted assembly was watched with a short
        one, its reboot needs the driver's.
        """
        with self._lock:
            watch = self.watches.get(assembly)
            if watch is not None:
                watch.liveness, watch.since, watch.last = Liveness.BOOTING, now, None
                watch.seq = watch.started = watch.digest = None
                watch.extended = 0.0
                if boot_timeout is not None:
                    watch.boot_timeout = boot_timeout
                self._push(assembly, watch)

    def _silent(self, watch: Watch, now: float) -> bool:
        """Silent for longer than one and a half beats: no beat is merely late."""
        reference = watch.last if watch.last is not None else watch.since
        return now - reference > watch.interval * 1.5

    def check(self, now: float) -> Verdict:
        """Declare lost assemblies, or a mass loss; call at :meth:`next_deadline`.

        O(log N) per deadline that came; the O(N) count of silent assemblies runs only when
        a live one is due, or during a mass loss.
        """
        with self._lock:
            if self.mass_loss:
                return self._check_mass_loss(now)
            due = self._due(now)
            if any(self.watches[a].liveness is Liveness.ALIVE for a in due):
                live = self._live()
                silent = [a for a in live if self._silent(self.watches[a], now)]
                if len(silent) >= self._mass_threshold(len(live)):
                    self.mass_loss = True
                    self._rebuild()
                    return Verdict(mass_loss_started=tuple(sorted(silent)))
            for assembly in due:
                self.watches[assembly].liveness = Liveness.LOST
            return Verdict(lost=tuple(due))

    def _check_mass_loss(self, now: float) -> Verdict:
        live = self._live()
        silent = [a for a in live if self._silent(self.watches[a], now)]
        if len(silent) >= self._mass_threshold(len(live)):
            return Verdict()
        self.mass_loss = False
        for assembly in silent:
            watch = self.watches[assembly]
            watch.grace_until = max(watch.grace_until, now + watch.timeout)
        self._rebuild()
        lost = self._due(now)
        for assembly in lost:
            self.watches[assembly].liveness = Liveness.LOST
        return Verdict(lost=tuple(lost), mass_loss_ended=True)

    def _live(self) -> list[str]:
        return [a for a, w in self.watches.items() if w.liveness is Liveness.ALIVE]

    def _rebuild(self) -> None:
        """One exact entry per watch not lost (around a mass loss, which is rare)."""
        self._heap = [(w.deadline(), a, w.version) for a, w in self.watches.items()
                      if w.liveness is not Liveness.LOST]
        heapq.heapify(self._heap)

    def _mass_threshold(self, watched: int) -> int:
        return max(self.mass_minimum, int(watched * self.mass_fraction + 0.999999))

    def declare_lost(self, assembly: str) -> bool:
        """Lost for another reason (e.g. its sandbox is gone); False if already lost/unknown."""
        with self._lock:
            watch = self.watches.get(assembly)
            if watch is None or watch.liveness is Liveness.LOST:
                return False
            watch.liveness = Liveness.LOST
            return True

    def next_deadline(self, now: float) -> float | None:
        """When :meth:`check` should run next (None: nothing to watch).

        During a mass loss the watch re-checks every beat interval: beats coming back end it.
        """
        with self._lock:
            if self.mass_loss:
                watches = [w for w in self.watches.values() if w.liveness is not Liveness.LOST]
                return now + min(w.interval for w in watches) if watches else None
            self._settle()
            return self._heap[0][0] if self._heap else None
