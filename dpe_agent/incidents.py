"""Incident timing: from the moment a failure is seen to the moment its component runs again.

An incident opens on the first failure of a resource or assembly (later failures of the same
component join it, e.g. a failed restart) and closes when the component is back to running.
The closing event carries ``detected_at``, ``recovered_at``, ``duration_ms`` and the reason of
the first failure, which is what MTTR figures are computed from. Pure: times are passed in.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

from pcloud.wire import format_epoch as iso


@dataclass
class Incident:
    key: tuple[str, ...]
    detected_at: float          # epoch seconds
    reason: str
    id: str = field(default_factory=lambda: str(uuid.uuid4()))
    recovered_at: float | None = None
    escalated_to: str | None = None

    @property
    def duration_ms(self) -> float | None:
        if self.recovered_at is None:
            return None
        return round((self.recovered_at - self.detected_at) * 1000.0, 3)

    def timing(self) -> dict[str, str]:
        """Event attributes of a closed incident."""
        attrs = {"incident": self.id, "detected_at": iso(self.detected_at),
                 "reason": self.reason}
        if self.recovered_at is not None:
            attrs["recovered_at"] = iso(self.recovered_at)
            attrs["duration_ms"] = f"{self.duration_ms:.3f}"
        return attrs


class IncidentTracker:
    """Open incidents by component key: ``(assembly,)`` or ``(assembly, resource)``."""

    def __init__(self) -> None:
        self.open: dict[tuple[str, ...], Incident] = {}

    def failed(self, key: tuple[str, ...], now: float, reason: str) -> Incident:
        """Open an incident, or return the one already open for that component."""
        incident = self.open.get(key)
        if incident is None:
            incident = self.open[key] = Incident(key, now, reason)
        return incident

    def get(self, key: tuple[str, ...]) -> Incident | None:
        return self.open.get(key)

    def recovered(self, key: tuple[str, ...], now: float) -> Incident | None:
        """Close the component's incident (None when it had none)."""
        incident = self.open.pop(key, None)
        if incident is not None:
            incident.recovered_at = now
        return incident

    def drop(self, prefix: tuple[str, ...]) -> None:
        """Forget incidents of a component and everything inside it (stopped or removed)."""
        for key in [k for k in self.open if k[:len(prefix)] == prefix]:
            del self.open[key]
