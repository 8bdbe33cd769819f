"""Escalation of repeated failures and flapping back-off, as pure logic with the clock injected.

A failure is normally answered by restarting what failed. When a resource fails
``escalation_failures`` times within ``escalation_period`` seconds, its whole assembly is
restarted instead; when an assembly fails (lost, or restarted by escalation) that often, the
whole deployable is restarted; when the deployable is restarted more often than its own
attributes allow, the DPE gives up (the deployable becomes ``failed``) and leaves it to an
operator. Levels without escalation attributes never escalate.

Independently of escalation, a component that keeps failing soon after each restart is
*flapping*: its restarts are delayed by a growing back-off, reset once it has stayed healthy
for ``min_uptime`` seconds. The first restarts are immediate, so a single crash is repaired as
fast as possible.

Times are epoch seconds (wall clock) so windows persisted by the DPE store stay meaningful
across a DPE restart.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any


class Level(enum.StrEnum):
    """What a failure restarts."""

    RESOURCE = "resource"
    ASSEMBLY = "assembly"
    DEPLOYABLE = "deployable"
    GIVE_UP = "give_up"


_NEXT = {Level.RESOURCE: Level.ASSEMBLY, Level.ASSEMBLY: Level.DEPLOYABLE,
         Level.DEPLOYABLE: Level.GIVE_UP}


class EscalationWindow:
    """Failure times of one component within a sliding period.

    ``failures=None`` means the component has no escalation attributes: failures are still
    counted (for status) but the window never crosses.
    """

    def __init__(self, failures: int | None, period: float | None,
                 times: Iterable[float] = ()) -> None:
        self.failures = failures
        self.period = period
        self.times: deque[float] = deque(sorted(times))

    @property
    def enabled(self) -> bool:
        return bool(self.failures) and self.period is not None and self.period > 0

    def prune(self, now: float) -> None:
        """Forget failures older than the period (all of them when escalation is off)."""
        horizon = now - self.period if self.enabled else now
        while self.times and self.times[0] <= horizon:
            self.times.popleft()

    def record(self, now: float) -> bool:
        """Count one failure; True when the window crosses its threshold (and is then reset)."""
        if not self.enabled:
            return False
        self.prune(now)
        self.times.append(now)
        if len(self.times) >= self.failures:
            self.times.clear()
            return True
        return False

    def count(self, now: float) -> int:
        self.prune(now)
        return len(self.times)


@dataclass
class Backoff:
    """Restart delay of one component: grows while it flaps, resets after healthy uptime."""

    free_restarts: int = 3
    base: float = 0.5
    cap: float = 30.0
    min_uptime: float = 5.0
    streak: int = 0
    healthy_since: float | None = None

    def failed(self, now: float) -> float:
        """Register a failure; return how long to wait before restarting."""
        if self.healthy_since is not None and now - self.healthy_since >= self.min_uptime:
            self.streak = 0
        self.healthy_since = None
        self.streak += 1
        if self.streak <= self.free_restarts:
            return 0.0
        return min(self.cap, self.base * 2 ** (self.streak - self.free_restarts - 1))

    def healthy(self, now: float) -> None:
        """The component is running again: its uptime counts from now."""
        if self.healthy_since is None:
            self.healthy_since = now


@dataclass(frozen=True)
class Thresholds:
    """Escalation attributes of one level (both None: never escalate)."""

    failures: int | None = None
    period: float | None = None


@dataclass(frozen=True)
class Decision:
    """What to do about one failure.

    ``level`` is what to restart; ``escalated_from`` is set when a threshold was crossed
    (the failed component's level); ``delay`` is the back-off before the restart.
    """

    level: Level
    assembly: str | None = None
    resource: str | None = None
    escalated_from: Level | None = None
    delay: float = 0.0
    failures: int = 0
    period: float | None = None

    @property
    def escalated(self) -> bool:
        return self.escalated_from is not None


def _key(assembly: str | None = None, resource: str | None = None) -> str:
    return "/".join(part for part in (assembly, resource) if part is not None)


@dataclass
class EscalationPolicy:
    """Failure windows and back-offs of one deployable's resources and assemblies."""

    deployable: Thresholds = field(default_factory=Thresholds)
    assemblies: dict[str, Thresholds] = field(default_factory=dict)
    resources: dict[tuple[str, str], Thresholds] = field(default_factory=dict)
    backoff_defaults: dict[str, float] = field(default_factory=dict)
    windows: dict[str, EscalationWindow] = field(default_factory=dict)
    backoffs: dict[str, Backoff] = field(default_factory=dict)

    def _thresholds(self, assembly: str | None, resource: str | None) -> Thresholds:
        if resource is not None:
            return self.resources.get((assembly, resource), Thresholds())
        if assembly is not None:
            return self.assemblies.get(assembly, Thresholds())
        return self.deployable

    def window(self, assembly: str | None = None, resource: str | None = None) -> EscalationWindow:
        key = _key(assembly, resource)
        limits = self._thresholds(assembly, resource)
        win = self.windows.get(key)
        if win is None:
            win = self.windows[key] = EscalationWindow(limits.failures, limits.period)
        else:
            win.failures, win.period = limits.failures, limits.period
        return win

    def backoff(self, assembly: str | None = None, resource: str | None = None) -> Backoff:
        key = _key(assembly, resource)
        if key not in self.backoffs:
            self.backoffs[key] = Backoff(**self.backoff_defaults)
        return self.backoffs[key]

    def resource_failed(self, assembly: str, resource: str, now: float) -> Decision:
        """A resource failed: restart it, or escalate to its assembly (or further)."""
        delay = self.backoff(assembly, resource).failed(now)
        win = self.window(assembly, resource)
        if win.record(now):
            return self._escalate(Level.RESOURCE, assembly, resource, win, now)
        return Decision(Level.RESOURCE, assembly, resource, delay=delay)

    def assembly_failed(self, assembly: str, now: float) -> Decision:
        """An assembly was lost: restart (fence + boot) it, or escalate to the deployable."""
        delay = self.backoff(assembly).failed(now)
        win = self.window(assembly)
        if win.record(now):
            return self._escalate(Level.ASSEMBLY, assembly, None, win, now)
        return Decision(Level.ASSEMBLY, assembly, delay=delay)

    def _escalate(self, source: Level, assembly: str, resource: str | None,
                  win: EscalationWindow, now: float) -> Decision:
        """The ``source`` window crossed: restart the next level, which counts as its failure."""
        target = _NEXT[source]
        if target is Level.ASSEMBLY and self.window(assembly).record(now):
            target = Level.DEPLOYABLE
        if target is Level.DEPLOYABLE and self.window().record(now):
            target = Level.GIVE_UP
        return Decision(target, assembly, resource, escalated_from=source,
                        failures=win.failures or 0, period=win.period)

    def deployable_restarted(self, now: float) -> bool:
        """Count a whole-deployable restart not caused by ``_escalate``; True means give up."""
        return self.window().record(now)

    def healthy(self, assembly: str, resource: str | None, now: float) -> None:
        """A resource or assembly is running again (starts its uptime for the back-off)."""
        self.backoff(assembly, resource).healthy(now)

    def reset(self, assembly: str | None = None, resource: str | None = None) -> None:
        """Forget a component's failures (operator clear, or removed by a reload)."""
        prefix = _key(assembly, resource)
        for table in (self.windows, self.backoffs):
            for key in [k for k in table if k == prefix or k.startswith(prefix + "/")]:
                del table[key]

    def failure_count(self, assembly: str, resource: str | None, now: float) -> int:
        return self.window(assembly, resource).count(now)

    def snapshot(self) -> dict[str, Any]:
        """JSON-able state for the DPE store."""
        return {"windows": {k: list(w.times) for k, w in self.windows.items() if w.times},
                "backoffs": {k: [b.streak, b.healthy_since] for k, b in self.backoffs.items()
                             if b.streak}}

    def restore(self, data: dict[str, Any]) -> None:
        """Load windows saved by :meth:`snapshot` (thresholds come from the configuration)."""
        for key, times in data.get("windows", {}).items():
            parts = key.split("/")
            win = self.window(*parts) if key else self.window()
            win.times = deque(sorted(float(t) for t in times))
        for key, (streak, since) in data.get("backoffs", {}).items():
            parts = key.split("/")
            backoff = self.backoff(*parts) if key else self.backoff()
            backoff.streak, backoff.healthy_since = int(streak), since
