"""How many assemblies of a deployable boot at once: bounded and adaptive (issue 13).

Booting 200 sandboxes (or VMs) at once starves the host: no agent gets its first heartbeat
out within the boot timeout, the DPE fences and reboots them, and the storm feeds itself.
So boots wait their turn: at most ``limit`` are *booting* (start issued, no first beat yet).
The limit adapts like TCP's window: each boot that comes online within ``fast`` seconds
raises it by one (up to ``maximum``), each that takes longer than ``slow`` or never comes
online halves it (down to ``minimum``). A host that boots quickly ramps up to ``maximum``
in a few rounds; a loaded one settles where its boots stay quick.

Pure: times are monotonic seconds supplied by the caller.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

DEFAULT_MAXIMUM = 32
INITIAL = 8.0


@dataclass
class BootGate:
    """Boots waiting for a turn, and boots under way."""

    maximum: int = DEFAULT_MAXIMUM
    minimum: int = 2
    fast: float = 5.0
    slow: float = 15.0
    limit: float = INITIAL
    waiting: deque[str] = field(default_factory=deque)
    booting: dict[str, float] = field(default_factory=dict)   # assembly -> start issued

    def __post_init__(self) -> None:
        self.minimum = max(1, min(self.minimum, self.maximum))
        self.limit = float(min(max(self.limit, self.minimum), self.maximum))

    def want(self, assembly: str) -> None:
        """The assembly should boot: it queues for a turn (once)."""
        if assembly not in self.booting and assembly not in self.waiting:
            self.waiting.append(assembly)

    def queued(self, assembly: str) -> bool:
        return assembly in self.waiting

    def admit(self, now: float) -> list[str]:
        """The assemblies whose start may be issued now (they count as booting from now)."""
        admitted = []
        while self.waiting and len(self.booting) < int(self.limit):
            assembly = self.waiting.popleft()
            self.booting[assembly] = now
            admitted.append(assembly)
        return admitted

    def online(self, assembly: str, now: float) -> None:
        """Its first heartbeat came: a quick boot widens the gate, a slow one narrows it."""
        issued = self.booting.pop(assembly, None)
        if issued is None:
            return
        took = now - issued
        if took <= self.fast:
            self.limit = min(float(self.maximum), self.limit + 1)
        elif took > self.slow:
            self._narrow()

    def failed(self, assembly: str) -> None:
        """Its boot failed or timed out: the host is struggling, the gate narrows."""
        if self.booting.pop(assembly, None) is not None:
            self._narrow()
        self._drop(assembly)

    def cancel(self, assembly: str) -> None:
        """No longer to be booted (stopped, removed): its turn or slot is freed, no verdict."""
        self.booting.pop(assembly, None)
        self._drop(assembly)

    def _narrow(self) -> None:
        self.limit = max(float(self.minimum), self.limit / 2)

    def _drop(self, assembly: str) -> None:
        try:
            self.waiting.remove(assembly)
        except ValueError:
            pass
