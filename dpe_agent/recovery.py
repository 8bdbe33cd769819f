"""What a failure leads to: a restart, or an escalation one level up, with back-off.

A failed resource is restarted by the next transition graph; a lost assembly is fenced and
booted again. :class:`dpe_agent.escalation.EscalationPolicy` decides when repeated failures
restart the whole assembly or the whole deployable instead, or when to give up, and how long
a flapping component's restart is held back. A mixin of :class:`dpe_agent.daemon.Dpe`.
"""

from __future__ import annotations

import logging
import time

from dpe_agent.cib import rsc_id
from dpe_agent.escalation import Decision, EscalationPolicy, Level, Thresholds
from pcloud.deployable import Deployable
from pcloud.events import EventType
from pcloud.states import AssemblyState as A
from pcloud.states import DeployableState as D
from pcloud.states import ResourceState as R

BLOCKED_REPROBE = 300.0   # seconds between probes of a blocked resource

log = logging.getLogger("dped")


class Recovery:
    """Restart or escalate failed resources and assemblies (main loop only)."""

    def _assembly_lost(self, asm: str, reason: str) -> None:
        if self.stopping or asm in self.busy and self.busy[asm] != "start":
            return
        self.busy.pop(asm, None)
        self.awaiting.discard(asm)
        self.reprobe_on_beat.discard(asm)
        self.boot_gate.failed(asm)     # a boot's turn ends with its loss, however it was seen
        self.losses[asm] = self.losses.get(asm, 0) + 1
        log.warning("assembly %s lost: %s", asm, reason)
        decision = self.policy.assembly_failed(asm, time.time())
        self.fail_counts[(asm,)] = self.fail_counts.get((asm,), 0) + 1
        self._persist = True
        self._assembly_state(asm, A.FAILED, reason)      # before its resources' events
        for svc in self.dep.assembly(asm).services:
            if self.state(asm, svc.name) not in (R.PENDING, R.STOPPED):
                self.incidents.failed((asm, svc.name), time.time(), f"assembly {asm} lost")
                self._resource_state(asm, svc.name, R.PENDING, f"assembly {asm} lost")
        if self._escalate(decision, reason):
            return
        self.observed.set_lost(asm)
        if self.run is not None:
            self.run.abandon_node(asm)
        if decision.delay:
            self.holds[(asm,)] = time.monotonic() + decision.delay
        self._abort(f"assembly {asm} lost")

    def _resource_failed(self, asm: str, svc: str, reason: str, detected: float) -> None:
        """A resource failed (report, monitor or start): restart it or escalate."""
        self.fail_counts[(asm, svc)] = self.fail_counts.get((asm, svc), 0) + 1
        self._persist = True
        self.incidents.failed((asm, svc), detected, reason)
        self._resource_state(asm, svc, R.FAILED, reason)
        self._abort(f"{asm}/{svc} failed")
        decision = self.policy.resource_failed(asm, svc, time.time())
        if not self._escalate(decision, reason) and decision.delay:
            log.info("%s/%s flaps: restart delayed %.1f s", asm, svc, decision.delay)
            self.holds[(asm, svc)] = time.monotonic() + decision.delay

    def _resource_blocked(self, asm: str, svc: str, reason: str) -> None:
        """Not installed or not configured: retrying cannot help, so it is not a failure.

        It stays ``blocked`` (no restart, no failure count, no escalation) until its
        configuration changes, an operator cleans it up, or a probe every
        :data:`BLOCKED_REPROBE` seconds finds that it can run after all.
        """
        self.blocked[(asm, svc)] = time.monotonic() + BLOCKED_REPROBE
        if self.state(asm, svc) != R.BLOCKED:
            log.warning("%s/%s blocked: %s", asm, svc, reason)
            self._resource_state(asm, svc, R.BLOCKED, reason)

    def _reprobe_blocked(self, now: float) -> None:
        """Forget a blocked resource's history when its re-probe is due: the next graph
        probes it, and starts it if it can run now."""
        for key, due in list(self.blocked.items()):
            if self.state(*key) != R.BLOCKED:
                del self.blocked[key]
            elif now >= due:
                self.blocked[key] = now + BLOCKED_REPROBE
                self._forget_resource(*key)
                self._abort(f"re-probing blocked {key[0]}/{key[1]}")

    def _forget_resource(self, asm: str, svc: str) -> None:
        """Clear what is known of a resource's operations: the next graph probes it."""
        self.observed.forget(asm, rsc_id(asm, svc))

    def _cleanup_resource(self, asm: str, svc: str) -> None:
        """An operator's clean-up: failures, back-off and blocking forgotten, probed again."""
        self.blocked.pop((asm, svc), None)
        self.holds.pop((asm, svc), None)
        self.fail_counts.pop((asm, svc), None)
        self.failures.pop((asm, svc), None)
        self.policy.reset(asm, svc)
        self._persist = True
        self._forget_resource(asm, svc)
        self._abort(f"{asm}/{svc} cleaned up")

    def _escalate(self, decision: Decision, reason: str) -> bool:
        """Act on an escalated decision; False when it is a plain restart."""
        if not decision.escalated:
            return False
        what = f"{decision.assembly}/{decision.resource}" if decision.resource else \
            decision.assembly
        target = {Level.ASSEMBLY: "assembly", Level.DEPLOYABLE: "deployable"}.get(
            decision.level)
        text = (f"{what} failed {decision.failures} times within {decision.period:g} s "
                f"(last: {reason})")
        self.emit(EventType.ESCALATION, decision.assembly, decision.resource,
                  reason=text if target else f"{text}; the deployable keeps failing: giving up",
                  escalated_to=target, escalated_from=decision.escalated_from.value)
        if decision.level is Level.ASSEMBLY:
            self._restart_assemblies([decision.assembly], f"escalation: {text}")
        elif decision.level is Level.DEPLOYABLE:
            self.change_state((), D.RECOVERING, f"escalation: {text}")
            self._restart_assemblies(self._assemblies(), f"escalation: {text}")
        else:
            self.gave_up = True
            self.change_state((), D.FAILED, f"escalation gave up: {text}")
            self._stop_assemblies(self._assemblies())
        return True

    def _restart_assemblies(self, names: list[str], reason: str) -> None:
        """Stop (gracefully, then by force) and boot again: resources start from scratch."""
        self._abort(reason)
        for asm in names:
            for svc in self.dep.assembly(asm).services:
                if self.state(asm, svc.name) not in (R.PENDING, R.STOPPED):
                    self.incidents.failed((asm, svc.name), time.time(), reason)
                    self._resource_state(asm, svc.name, R.PENDING, reason)
            if self.state(asm) == A.RUNNING:
                self._assembly_state(asm, A.RESTARTING, reason)
            self.incidents.failed((asm,), time.time(), reason)
            self.busy[asm] = "restart"
            self.awaiting.discard(asm)
            self.tracker.restart_watch(asm, time.monotonic())
            self.observed.set_fenced(asm)
            self._submit_driver(asm, "restart")


def _thresholds(failures: int | None, period: float | None) -> Thresholds:
    return Thresholds(failures, period) if failures and period else Thresholds()


def policy_for(dep: Deployable) -> EscalationPolicy:
    return EscalationPolicy(
        deployable=_thresholds(dep.escalation_failures, dep.escalation_period),
        assemblies={a.name: _thresholds(a.escalation_failures, a.escalation_period)
                    for a in dep.assemblies},
        resources={(a.name, s.name): _thresholds(s.escalation_failures, s.escalation_period)
                   for a, s in dep.services()})


def rebuild_policy(old: EscalationPolicy, dep: Deployable) -> EscalationPolicy:
    new = policy_for(dep)
    new.restore(old.snapshot())
    return new
