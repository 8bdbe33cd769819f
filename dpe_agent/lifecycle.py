"""States and events of one deployable: the one place they change.

Every state change goes through :meth:`Lifecycle.change_state`, which checks the tables of
:mod:`pcloud.states`, stores the state and publishes the matching event; the helpers for
resources and assemblies add the incident timing (detection to recovery) to the events.
A mixin of :class:`dpe_agent.daemon.Dpe`, run on its main loop only.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from dpe_agent.incidents import iso
from pcloud.bus import Message
from pcloud.events import Event, EventType
from pcloud.states import AssemblyState as A
from pcloud.states import DeployableState as D
from pcloud.states import ResourceState as R
from pcloud.states import TransitionError, check_transition

log = logging.getLogger("dped")


class Lifecycle:
    """States, events and incident timing (main loop only)."""

    def state(self, *key: str) -> str | None:
        return self.states.get(key)

    def change_state(self, key: tuple[str, ...], new: str, reason: str | None = None,
                     **extra: Any) -> bool:
        """The one place states change: check the transition, store it, emit the event.
        A transition the state machine (:mod:`pcloud.states`) does not allow is refused:
        logged as an error and kept in ``violations``, which the tests' DPE harness asserts
        empty."""
        kind = ("deployable", "assembly", "resource")[len(key)]
        old = self.states.get(key)
        if old == new:
            return False
        try:
            check_transition(kind, old, new)
        except TransitionError as exc:
            self.violations.append(f"{'/'.join(key) or self.name}: {exc}")
            log.error("%s (%s): refused", exc, "/".join(key) or self.name)
            return False
        self.states[key] = new
        if reason:
            self.reasons[key] = reason
        else:                          # a reason explains one state, never the next
            self.reasons.pop(key, None)
        self.store.save_state(kind, "/".join(key) or self.name, new, reason)
        etype = {0: EventType.DEPLOYABLE_STATE_CHANGE, 1: EventType.ASSEMBLY_STATE_CHANGE,
                 2: EventType.RESOURCE_STATE_CHANGE}[len(key)]
        self.emit(etype, *key, state=new, reason=reason, previous=old, **extra)
        log.info("%s %s: %s -> %s%s", kind, "/".join(key) or self.name, old or "(new)", new,
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
        if new == R.STARTING and self.state(asm, svc) == R.FAILED:
            self.change_state((asm, svc), R.RESTARTING, "recovering")
        self._component_state((asm, svc), new, reason)

    def _assembly_state(self, asm: str, new: str, reason: str | None = None) -> None:
        if new == A.STARTING and self.state(asm) in (A.FAILED, A.RUNNING):
            self.change_state((asm,), A.RESTARTING, reason)
        elif new == A.STARTING and self.state(asm) == A.STOPPING:   # a stop left half-done
            self.change_state((asm,), A.STOPPED, reason)
        self._component_state((asm,), new, reason)

    def _resource_stopped(self, asm: str, svc: str, reason: str | None = None) -> None:
        """To ``stopped``, through ``stopping`` where the lifecycle asks for it."""
        if self.state(asm, svc) not in (R.STOPPED, R.PENDING, R.STOPPING, R.BLOCKED):
            self.change_state((asm, svc), R.STOPPING, reason)
        self.change_state((asm, svc), R.STOPPED, reason)

    def _component_state(self, key: tuple[str, ...], new: str, reason: str | None) -> None:
        """Change a resource's or assembly's state with its incident (and failure) record.

        Failing opens an incident (or joins the open one) and is remembered for the status
        (``last_failure``); running again closes the incident, whose timing goes on the event.
        """
        extra: dict[str, str] = {}
        now = time.time()
        if new == R.RUNNING:            # the same value for assemblies and resources
            incident = self.incidents.recovered(key, now)
            if incident is not None:
                extra = incident.timing()
                first_reason = extra.pop("reason", None)
                reason = reason or first_reason
        elif new == R.FAILED and reason:
            extra = {"incident": self.incidents.failed(key, now, reason).id}
            self.failures[key] = (now, reason)
            self._persist = True
        self.change_state(key, new, reason, **extra)

    def _update_deployable_state(self) -> None:
        current = self.state()
        if self.stopping or self.gave_up or current in (D.STOPPING, D.STOPPED, D.FAILED):
            return
        if self.tracker.mass_loss:
            return
        # Components a reload added count once they ran, or failed: until then they are
        # starting, not a degradation.
        self.adding = {k for k in self.adding if self.state(*k) in (R.PENDING, R.STARTING)}
        whole = all(self.state(a) == A.RUNNING or (a,) in self.adding
                    for a in self._assemblies()) and all(
            self.state(a.name, s.name) == R.RUNNING or (a.name, s.name) in self.adding
            for a, s in self.dep.services())
        if whole and current == D.RUNNING:
            return
        if whole and not self.adding:
            self.change_state((), D.RUNNING)
        elif current in (D.RUNNING, D.STARTING) and (blocked := self._blocked_reason()):
            self.change_state((), D.DEGRADED, blocked)
        elif current == D.RUNNING:
            self.change_state((), D.DEGRADED, "a component failed and is being recovered")

    def _blocked_reason(self) -> str | None:
        """Why the deployable cannot be whole by waiting: its first blocked resource."""
        for asm, svc in self.dep.services():
            if self.state(asm.name, svc.name) == R.BLOCKED and (
                    asm.name, svc.name) not in self.adding:
                why = self.reasons.get((asm.name, svc.name)) or "not installed or not configured"
                return f"{asm.name}/{svc.name} is blocked: {why}"
        return None

    def _ensure_states(self, asm: str) -> None:
        if self.state(asm) is None:
            self.change_state((asm,), A.PENDING)
        for svc in self.dep.assembly(asm).services:
            if self.state(asm, svc.name) is None:
                self.change_state((asm, svc.name), R.PENDING)
