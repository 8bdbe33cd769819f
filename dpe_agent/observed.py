"""What the DPE has seen of a deployable: assembly membership and resource op history.

This is the input of the CIB status section. It keeps exactly what Pacemaker's scheduler
reads (last non-recurring op, recurring monitors, last failure, fail counts with the time
of the last failure), so a transition computer sees the same facts a real cluster would.
Pure data: times are passed in by the caller, nothing here reads the clock.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime

from dpe_agent.digest import DEFAULT_OP_TIMEOUT_MS, op_digest

INFINITY = 1000000
TRANSITION_UUID = "00000000-0000-4000-8000-00000000dbe0"

# OCF return codes used by the policy.
RC_OK = 0
RC_ERROR = 1
RC_NOT_RUNNING = 7


class AssemblyStatus(enum.Enum):
    """Membership of an assembly, as a cluster node."""

    ONLINE = "online"  # heartbeating; its history is current
    LOST = "lost"      # stopped heartbeating, not yet fenced: must be fenced
    FENCED = "fenced"  # known down (fenced, stopped or never launched): nothing runs there


@dataclass
class OpRecord:
    """One ``lrm_rsc_op`` entry."""

    operation: str
    interval_ms: int
    rc: int
    call_id: int
    expected_rc: int = RC_OK
    op_status: int = 0
    digest: str | None = None
    epoch: int = 0          # last-rc-change, seconds
    action_id: int = 0
    transition_id: int = 0

    @property
    def is_probe(self) -> bool:
        return self.operation == "monitor" and self.interval_ms == 0

    @property
    def failed(self) -> bool:
        """Not the expected result; a probe finding the resource running is not a failure.

        Pacemaker treats a probe (expected rc 7) that returns 0 as "found running": its
        scheduler takes the resource as active, and its controller counts no failure.
        """
        if self.op_status != 0:
            return True
        if self.is_probe and self.expected_rc == RC_NOT_RUNNING and self.rc == RC_OK:
            return False
        return self.rc != self.expected_rc

    @property
    def transition_key(self) -> str:
        return f"{self.action_id}:{self.transition_id}:{self.expected_rc}:{TRANSITION_UUID}"


@dataclass
class ResourceHistory:
    """Operation history of one resource on one assembly (an ``lrm_resource``)."""

    rsc_id: str
    rsc_class: str
    rsc_type: str
    provider: str | None = None
    last: OpRecord | None = None                      # last non-recurring op
    monitors: dict[int, OpRecord] = field(default_factory=dict)  # by interval
    last_failure: OpRecord | None = None
    fail_counts: dict[str, int] = field(default_factory=dict)     # "monitor_5000" -> n
    last_failures: dict[str, int] = field(default_factory=dict)   # "monitor_5000" -> epoch


@dataclass
class AssemblyObserved:
    """One assembly (a CIB node): membership and the history of its resources."""

    name: str
    status: AssemblyStatus = AssemblyStatus.FENCED
    resources: dict[str, ResourceHistory] = field(default_factory=dict)


def _epoch(now: datetime | float | int) -> int:
    return int(now.timestamp()) if isinstance(now, datetime) else int(now)


def instance_params(attributes: dict[str, str]) -> dict[str, str]:
    """The resource parameters among a graph action's attributes (meta attributes dropped)."""
    return {k: v for k, v in attributes.items()
            if not k.startswith("CRM_meta_") and k != "crm_feature_set"}


class ObservedState:
    """Observed state of one deployable; assemblies are keyed by name."""

    def __init__(self) -> None:
        self.assemblies: dict[str, AssemblyObserved] = {}
        self._call_id = 0

    # -- membership -------------------------------------------------------------------
    def assembly(self, name: str) -> AssemblyObserved:
        if name not in self.assemblies:
            self.assemblies[name] = AssemblyObserved(name)
        return self.assemblies[name]

    def status(self, name: str) -> AssemblyStatus:
        found = self.assemblies.get(name)
        return found.status if found else AssemblyStatus.FENCED

    def set_online(self, name: str) -> None:
        """The assembly heartbeats (again) with the history it had."""
        self.assembly(name).status = AssemblyStatus.ONLINE

    def set_lost(self, name: str) -> None:
        """The assembly missed its heartbeats: the next transition fences it."""
        self.assembly(name).status = AssemblyStatus.LOST

    def set_fenced(self, name: str) -> None:
        """The assembly is known down: nothing runs there, history and fail counts go."""
        asm = self.assembly(name)
        asm.status = AssemblyStatus.FENCED
        asm.resources.clear()

    def rejoined(self, name: str) -> None:
        """The assembly came (back) up with nothing known about it: probes will follow."""
        asm = self.assembly(name)
        asm.status = AssemblyStatus.ONLINE
        asm.resources.clear()

    # -- history ----------------------------------------------------------------------
    def resource(self, assembly: str, rsc_id: str) -> ResourceHistory | None:
        asm = self.assemblies.get(assembly)
        return asm.resources.get(rsc_id) if asm else None

    def forget(self, assembly: str, rsc_id: str) -> None:
        """Drop a resource's history (what a ``delete`` of an orphan does)."""
        asm = self.assemblies.get(assembly)
        if asm:
            asm.resources.pop(rsc_id, None)

    def next_call_id(self) -> int:
        self._call_id += 1
        return self._call_id

    def record_op(self, assembly: str, rsc_id: str, rsc_class: str, rsc_type: str,
                  operation: str, interval_ms: int, rc: int, *,
                  provider: str | None = None, params: dict[str, str] | None = None,
                  timeout_ms: int = DEFAULT_OP_TIMEOUT_MS, expected_rc: int | None = None,
                  op_status: int = 0, now: datetime | float = 0, digest: str | None = None,
                  action_id: int = 0, transition_id: int = 0) -> OpRecord:
        """Record the result of one resource operation and update fail counts.

        ``params`` are the instance parameters the operation ran with (for its digest);
        ``expected_rc`` defaults to 7 for probes and 0 otherwise.
        """
        asm = self.assembly(assembly)
        hist = asm.resources.get(rsc_id)
        if hist is None:
            hist = ResourceHistory(rsc_id, rsc_class, rsc_type, provider)
            asm.resources[rsc_id] = hist
        if operation == "delete":
            del asm.resources[rsc_id]
            return OpRecord(operation, 0, rc, self.next_call_id())
        if operation == "cancel":
            hist.monitors.pop(interval_ms, None)
            return OpRecord(operation, interval_ms, rc, self.next_call_id())
        if expected_rc is None:
            expected_rc = RC_NOT_RUNNING if operation == "monitor" and interval_ms == 0 else RC_OK
        if digest is None:
            digest = op_digest(params or {}, interval_ms=interval_ms, timeout_ms=timeout_ms)
        epoch = _epoch(now)
        op = OpRecord(operation, interval_ms, rc, self.next_call_id(), expected_rc, op_status,
                      digest, epoch, action_id, transition_id)
        if interval_ms > 0:
            hist.monitors[interval_ms] = op
        else:
            hist.last = op
            if operation == "stop" and not op.failed:
                hist.monitors.clear()  # stopping cancels the recurring monitors
        if op.failed:
            self._count_failure(hist, op, epoch)
        return op

    def _count_failure(self, hist: ResourceHistory, op: OpRecord, epoch: int) -> None:
        hist.last_failure = op
        key = f"{op.operation}_{op.interval_ms}"
        if op.operation == "stop":
            hist.fail_counts[key] = INFINITY
        else:
            hist.fail_counts[key] = min(INFINITY, hist.fail_counts.get(key, 0) + 1)
        hist.last_failures[key] = epoch

    def report_monitor(self, assembly: str, rsc_id: str, interval_ms: int, rc: int, *,
                       now: datetime | float, op_status: int = 0) -> OpRecord | None:
        """An agent reports a changed recurring monitor result (e.g. rc 7: not running)."""
        hist = self.resource(assembly, rsc_id)
        if hist is None or interval_ms not in hist.monitors:
            return None
        old = hist.monitors[interval_ms]
        op = OpRecord("monitor", interval_ms, rc, self.next_call_id(), old.expected_rc,
                      op_status, old.digest, _epoch(now), old.action_id, old.transition_id)
        hist.monitors[interval_ms] = op
        if op.failed:
            self._count_failure(hist, op, op.epoch)
        return op

    def clear_failcount(self, assembly: str, rsc_id: str, op_key: str | None = None) -> None:
        """Forget fail counts (all, or of one ``<op>_<interval>``) of a resource."""
        hist = self.resource(assembly, rsc_id)
        if hist is None:
            return
        keys = list(hist.fail_counts) if op_key is None else [op_key]
        for key in keys:
            hist.fail_counts.pop(key, None)
            hist.last_failures.pop(key, None)
        if not hist.fail_counts:
            hist.last_failure = None

    def record(self, action, rc: int = RC_OK, *, now: datetime | float = 0,
               op_status: int = 0, transition_id: int = 0) -> None:
        """Feed back the result of one executed graph action (a ``graph.Action``)."""
        if action.kind == "pseudo_event":
            return
        if action.kind == "crm_event":
            if action.operation == "stonith":
                if rc == RC_OK and action.node:
                    self.set_fenced(action.node)  # ``downed`` holds uuids, node is the name
            elif action.operation == "clear_failcount":
                self.clear_failcount(action.node, action.resource)
            return
        self.record_op(action.node, action.resource, action.rsc_class or "ocf",
                       action.rsc_type or "", action.operation, action.interval_ms, rc,
                       provider=action.provider, params=instance_params(action.attributes),
                       timeout_ms=action.timeout_ms, expected_rc=action.target_rc,
                       op_status=op_status, now=now, action_id=action.id,
                       transition_id=transition_id)
