"""How far behind the broker is, from the DPE's own heartbeat heard back.

The DPE beats every second on ``pcloud.heartbeat.<deployable>.-`` for the CPE, and its own
subscription to the deployable's heartbeats brings each beat back to it through the broker.
Assemblies' beats take the same road. So while the DPE's own beat is overdue, the broker or
the host under it is behind, every assembly's beats are late with it, and their silence
proves nothing: the same rule as for the DPE's own pauses and its bus thread's lag (issue
13: ten DPEs on a host starved by a boot storm fenced dozens of assemblies that were
beating all along, which fed the storm).

Two rules, pure, on the caller's clock:

- while the echo is overdue by more than ``limit``, nobody is judged;
- when it comes back, deadlines move out by how much later it came than the one before
  (growth beyond ``limit``): a broker that stays steadily behind delays every beat alike and
  excuses nothing, so a dead assembly is still found.

The excuse has a bound: an echo missing for ``give_up`` seconds (the beat dropped, the
subscription lost) stops excusing anyone, so a broken echo never blinds the DPE.
"""

from __future__ import annotations

from dataclasses import dataclass

LIMIT = 0.5         # seconds of lateness tolerated before silence is excused
GIVE_UP = 30.0      # seconds without an echo after which it excuses nothing


@dataclass
class BrokerEcho:
    """The DPE's own beats as they come back: is the broker behind, and by how much more."""

    limit: float = LIMIT
    give_up: float = GIVE_UP
    waiting_since: float | None = None  # when the oldest beat not heard back was sent
    delay: float = 0.0                  # how late the last one came back (received - sent)

    def sent(self, now: float) -> None:
        """The DPE published a beat."""
        if self.waiting_since is None:
            self.waiting_since = now

    def heard(self, delay: float, now: float) -> float:
        """A beat came back ``delay`` seconds after it was sent. Returns the seconds by
        which every deadline moves out (0 when the delay did not grow beyond the limit; at
        most ``give_up``).
        The delay is measured from the beat's own sending, so a pause of the DPE itself
        (excused by its own rule) is not counted twice."""
        growth = delay - self.delay
        self.waiting_since, self.delay = None, max(0.0, delay)
        return min(growth, self.give_up) if growth > self.limit else 0.0

    def behind(self, now: float) -> bool:
        """Is a beat overdue enough to excuse silence, and not yet given up on?"""
        if self.waiting_since is None:
            return False
        return self.limit < now - self.waiting_since < self.give_up

    def forget(self) -> None:
        """The bus reconnected: what was sent before may never come back."""
        self.waiting_since, self.delay = None, 0.0
