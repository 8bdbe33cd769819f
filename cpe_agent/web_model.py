"""What the web console shows, folded from the public contract's answers and events.

Pure: no bus, no HTTP, no clock (times come from the events). ``cpe_agent.web`` feeds it
``deployable_status`` results and events and ships the JSON it returns to the browsers.

An incident follows the DPE's incident timing (docs/protocol.md, "Incident timing"): it
opens on a component's event carrying ``incident`` (its ``failed``, or ``pending`` after
its assembly was lost), collects the steps of that component (``fencing`` of an assembly,
``restarting``, ``starting``) and closes on the ``running`` event that carries
``recovered_at`` and ``duration_ms``.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from lxml import etree

from pcloud.bus.dedup import RecentIds

MAX_EVENTS = 300          # the live stream the page starts with
MAX_INCIDENTS = 2000      # closed incidents kept (the MTTR plot's points)
SEEN_EVENTS = 200_000     # (deployable, seq) remembered: history and live events overlap
STEP_STATES = frozenset({"failed", "pending", "restarting", "starting", "blocked"})

Key = tuple[str, str, str]     # (deployable, assembly or "-", resource or "-")


def epoch(text: str | None) -> float | None:
    """Seconds since the epoch of an event's ISO 8601 time (None if absent or bad)."""
    if not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


@dataclass
class Incident:
    """One failure of one component, from detection to running again."""

    id: str
    deployable: str
    assembly: str
    resource: str
    reason: str
    detected_at: float
    steps: list[dict[str, Any]] = field(default_factory=list)
    recovered_at: float | None = None
    duration_ms: float | None = None

    def step(self, phase: str, at: float | None, reason: str | None) -> None:
        at = self.detected_at if at is None else at
        self.steps.append({"phase": phase, "at": at, "reason": reason or "",
                           "after_ms": round(max(0.0, at - self.detected_at) * 1000.0, 1)})

    def rebase(self, detected_at: float) -> None:
        """Measure the steps from ``detected_at`` (the first step is the detection)."""
        self.detected_at = detected_at
        if self.steps:
            self.steps[0]["at"] = detected_at
        for step in self.steps:
            step["after_ms"] = round(max(0.0, step["at"] - detected_at) * 1000.0, 1)

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "deployable": self.deployable, "assembly": self.assembly,
                "resource": self.resource, "reason": self.reason,
                "detected_at": self.detected_at, "recovered_at": self.recovered_at,
                "duration_ms": self.duration_ms, "steps": self.steps}


def status_json(root: etree._Element) -> dict[str, Any]:
    """A ``deployable_status`` result as JSON."""
    return {
        "name": root.get("name", ""), "state": root.get("state", ""),
        "reason": root.get("reason", ""),
        "assemblies": [{
            "name": a.get("name", ""), "state": a.get("state", ""),
            "reason": a.get("reason", ""),
            "resources": [{"name": r.get("name", ""), "state": r.get("state", ""),
                           "fail_count": r.get("fail_count", "0"),
                           "reason": r.get("reason", "")}
                          for r in a.iter("resource")],
        } for a in root.iter("assembly")],
    }


class ConsoleModel:
    """Deployables, the recent events and the incidents; not thread-safe (callers lock)."""

    def __init__(self) -> None:
        self.deployables: dict[str, dict[str, Any]] = {}
        self.events: deque[dict[str, str]] = deque(maxlen=MAX_EVENTS)
        self.incidents: dict[str, Incident] = {}
        self._open: dict[Key, str] = {}
        self._seen = RecentIds(SEEN_EVENTS)
        self.last_seq: dict[str, int] = {}    # highest seq folded per deployable

    def set_status(self, root: etree._Element) -> dict[str, Any]:
        status = status_json(root)
        self.deployables[status["name"]] = status
        return status

    def forget_missing(self, names: set[str]) -> list[str]:
        """Drop deployables no longer listed (deleted); their names."""
        gone = [name for name in self.deployables if name not in names]
        for name in gone:
            del self.deployables[name]
            self.last_seq.pop(name, None)   # a new one of that name starts at seq 1
        return gone

    def fold(self, event: dict[str, str]) -> list[Incident] | None:
        """Take one event (its attributes); the incidents it changed, or None when this
        (deployable, seq) was seen already."""
        name = event.get("deployable", "")
        if self._seen.seen(f'{name}\0{event.get("seq", "")}'):
            return None
        seq = event.get("seq", "")
        if seq.isdigit():
            self.last_seq[name] = max(self.last_seq.get(name, 0), int(seq))
        self.events.append(event)
        self._apply_state(event)
        changed = self._fold_incident(event)
        return [changed] if changed is not None else []

    def _apply_state(self, event: dict[str, str]) -> None:
        """Show a state change at once; the next status answer confirms it."""
        state, kind = event.get("state"), event.get("type", "")
        status = self.deployables.get(event.get("deployable", ""))
        if not state or status is None or not kind.endswith("_state_change"):
            return
        if kind == "deployable_state_change":
            status["state"] = state
            return
        for assembly in status["assemblies"]:
            if assembly["name"] != event.get("assembly"):
                continue
            if kind == "assembly_state_change":
                assembly["state"] = state
            for resource in assembly["resources"]:
                if resource["name"] == event.get("resource"):
                    resource["state"] = state

    def _fold_incident(self, event: dict[str, str]) -> Incident | None:
        kind = event.get("type", "")
        key = (event.get("deployable", ""), event.get("assembly", "-") or "-",
               event.get("resource", "-") or "-")
        at = epoch(event.get("time"))
        if kind == "fencing":
            incident = self._current(key)
            if incident is not None:
                incident.step("fenced", at, event.get("reason"))
            return incident
        if kind not in ("resource_state_change", "assembly_state_change"):
            return None
        state = event.get("state", "")
        ident = event.get("incident")
        incident = self.incidents.get(ident) if ident else self._current(key)
        if incident is None and ident:
            # Opened by this event (or closed by it, when its opening was not seen).
            incident = Incident(ident, key[0], key[1], key[2], event.get("reason", ""),
                                epoch(event.get("detected_at")) or at or 0.0)
            self.incidents[ident] = incident
            self._open[key] = ident
            incident.step("detected", None, event.get("reason"))
            self._trim()
            if state == "failed":
                return incident
        if incident is None:
            return None
        if state == "running":
            detected = epoch(event.get("detected_at"))
            if detected is not None:       # the agent's detection time: the true start
                incident.rebase(detected)
            incident.recovered_at = epoch(event.get("recovered_at")) or at
            try:
                incident.duration_ms = float(event.get("duration_ms", ""))
            except ValueError:
                incident.duration_ms = None
            incident.step("running", incident.recovered_at, event.get("reason"))
            self._open.pop(key, None)
        elif state in STEP_STATES:
            incident.step(state, at, event.get("reason"))
        return incident

    def _current(self, key: Key) -> Incident | None:
        ident = self._open.get(key)
        return self.incidents.get(ident) if ident else None

    def _trim(self) -> None:
        if len(self.incidents) <= MAX_INCIDENTS:
            return
        open_ids = set(self._open.values())
        for ident in list(self.incidents):
            if len(self.incidents) <= MAX_INCIDENTS:
                break
            if ident not in open_ids:
                del self.incidents[ident]

    def snapshot(self) -> dict[str, Any]:
        return {"deployables": sorted(self.deployables.values(), key=lambda d: d["name"]),
                "events": list(self.events),
                "incidents": [i.to_json() for i in self.incidents.values()]}
