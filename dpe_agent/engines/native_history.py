"""Reading one resource's operation history the way Pacemaker's scheduler does.

The outcome is the resource's role on one node, the digests it runs with, its active
recurring monitors, and whether expired failures should be cleared. Failures older than
``failure-timeout`` are ignored once the fail count has expired too.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from dpe_agent.digest import op_digest
from dpe_agent.engines import Unsupported
from dpe_agent.engines.native_model import HistOp, LrmResource, Node, Primitive

UNKNOWN, STOPPED, RUNNING = "unknown", "stopped", "running"
# Results whose handling is implemented: success, generic error, not running, and the hard
# (invalid parameter, unimplemented, insufficient privileges, not installed) and fatal (not
# configured) errors, which ban a pinned resource from its only node; pending probes,
# monitors and stops, which change nothing. Pending starts, promoted roles, degraded results
# and other executor states (cancelled, not installed...) are refused, not guessed.
KNOWN_RCS = (0, 1, 2, 3, 4, 5, 6, 7)
BANNING_RCS = (2, 3, 4, 5, 6)
MASKED_PROBE_RCS = (2, 5)          # a probe with these means "not running here", and a ban
KNOWN_OP_STATUS = (0, 2)
PENDING, PENDING_RC = -1, 193


@dataclass
class Instance:
    """A resource's state on one node, from its history there."""

    node: Node
    lrm: LrmResource
    role: str = UNKNOWN
    failure: bool = False                  # an unexpired failure not cleared since: recover
    banned: bool = False                   # a hard or fatal error: never again on this node
    monitors: dict[int, str | None] = field(default_factory=dict)   # active recurring ops
    expired_monitors: set[int] = field(default_factory=set)
    fence: bool = False                    # a stop failed: the node must be fenced
    clear_failcount: bool = False

    @property
    def active(self) -> bool:
        return self.role == RUNNING

    @property
    def failed(self) -> bool:
        """Active with a failure to recover from (stop, then start again)."""
        return self.role == RUNNING and (self.failure or self.fence)

    @property
    def known(self) -> bool:
        """Its state on the node is known; otherwise Pacemaker probes it."""
        return self.role != UNKNOWN


def effective_failures(node: Node, prim: Primitive | None, now: int) -> tuple[int, int]:
    """(fail count not yet expired, latest last-failure epoch) of a resource on a node."""
    rid = prim.id if prim else ""
    count = node.fail_counts.get(rid, 0)
    latest = node.last_failures.get(rid, 0)
    timeout = prim.failure_timeout if prim else 0
    if count > 0 and timeout > 0 and latest > 0 and now > latest + timeout:
        return 0, latest
    return count, latest


def raw_failures(node: Node, prim: Primitive | None) -> int:
    """The fail count of a resource on a node, expired or not."""
    return node.fail_counts.get(prim.id if prim else "", 0)


def _is_probe(op: HistOp) -> bool:
    return op.operation == "monitor" and op.interval_ms == 0


def _probe_ok(op: HistOp) -> bool:
    return _is_probe(op) and op.op_status == 0 and op.rc in (0, 7)


def active_range(ops: list[HistOp]) -> tuple[int, int]:
    """(index of the last start, of the last stop) as Pacemaker's calculate_active_ops.

    A start counts whatever its result; without one, a monitor that found the resource
    running after the last stop stands for it.
    """
    start = stop = implied = -1
    for index, op in enumerate(ops):
        if op.operation == "stop" and op.op_status == 0:
            stop = index
        elif op.operation == "start":
            start = index
        elif op.operation == "monitor" and implied <= stop and op.rc in (0, 8):
            implied = index
    return (implied if start == -1 else start), stop


def read_instance(node: Node, lrm: LrmResource, prim: Primitive | None,
                  now: int) -> Instance:
    """Replay one resource's history on one node (Pacemaker's unpack_rsc_op)."""
    inst = Instance(node, lrm)
    timeout = prim.failure_timeout if prim else 0
    failures, _ = effective_failures(node, prim, now)
    counted = raw_failures(node, prim) > 0
    last_failure: tuple[str, int] | None = None
    rescheduled: list[tuple[int, int]] = []        # (index, interval) of expired failures
    for index, op in enumerate(lrm.ops):
        if op.operation in ("cancel", "delete", "notify"):
            continue
        pending = op.op_status == PENDING and op.rc == PENDING_RC
        if pending and op.operation == "start" or not pending and (
                op.rc not in KNOWN_RCS or op.op_status not in KNOWN_OP_STATUS):
            raise Unsupported(f"{op.operation} of {lrm.id} on {node.uname} recorded with "
                              f"rc-code={op.rc} op-status={op.op_status}")
        failed = op.failed and not _probe_ok(op)
        # Every entry older than failure-timeout is "expired" (successes too): with a fail
        # count that has fully expired it clears the count, with a live one it stands.
        expired = timeout > 0 and op.last_rc_change is not None \
            and now >= op.last_rc_change + timeout
        if expired and counted:
            if failures == 0:
                inst.clear_failcount = True
            else:
                expired = False
        if not expired and failed and op.is_last_failure and prim is not None \
                and op.operation in ("start", "monitor"):
            wanted = op_digest(prim.params, interval_ms=op.interval_ms,
                               timeout_ms=prim.monitors.get(op.interval_ms, 20000))
            if op.digest is not None and op.digest != wanted:
                inst.clear_failcount = True
        if expired and failed:
            if op.interval_ms == 0:
                continue                            # an expired failure is ignored
            if node.online and not node.unclean:
                if op.digest is not None:
                    rescheduled.append((index, op.interval_ms))
                continue
        if pending:
            continue                                # in flight: changes nothing yet
        if failed and op.op_status == 0 and op.rc in BANNING_RCS \
                and not (op.rc == 3 and op.interval_ms > 0):    # recurring: "not supported"
            inst.banned = True
            if _is_probe(op) and op.rc in MASKED_PROBE_RCS:
                inst.role = STOPPED                 # "not running", and banned
                continue
        if failed:
            last_failure = (op.operation, op.interval_ms)
            _failure(inst, op)
        else:
            _success(inst, op, last_failure)
    start, stop = active_range(lrm.ops)
    if start >= stop:
        for op in lrm.ops[max(start, 0):]:
            if op.interval_ms > 0 and op.operation == "monitor" and op.op_status != PENDING:
                inst.monitors[op.interval_ms] = op.digest
        # An expired monitor failure since the last start has its monitor rescheduled.
        inst.expired_monitors = {interval for index, interval in rescheduled if index >= start}
    return inst


def definition_changed(lrm: LrmResource, prim: Primitive) -> bool:
    """Whether an entry since the last start no longer matches the configuration.

    Pacemaker's check of each active resource's history (a changed digest, a missing one,
    or a recurring monitor no longer configured); with a live fail count it clears it.
    """
    start, stop = active_range(lrm.ops)
    if start < stop:
        return False
    for op in lrm.ops[max(start, 0):]:
        if op.interval_ms > 0:
            if op.interval_ms not in prim.monitors:
                return True
            wanted = op_digest(prim.params, interval_ms=op.interval_ms,
                               timeout_ms=prim.monitors[op.interval_ms])
        elif op.operation in ("start", "monitor"):
            wanted = op_digest(prim.params)
        else:
            continue
        if op.digest != wanted:
            return True
    return False


def restart_forced(lrm: LrmResource, prim: Primitive) -> bool:
    """Whether a start or probe since the last start ran with other parameters.

    Pacemaker then forces a restart (its stop and start exist even where the resource may
    no longer run).
    """
    start, stop = active_range(lrm.ops)
    if start < stop:
        return False
    wanted = op_digest(prim.params)
    return any(op.interval_ms == 0 and op.operation in ("start", "monitor")
               and op.digest != wanted for op in lrm.ops[max(start, 0):])


def _failure(inst: Instance, op: HistOp) -> None:
    """An unexpected result: the resource counts as active and must be recovered."""
    inst.failure = True
    if op.operation == "stop":
        inst.fence = True           # on-fail=fence, and never again on this node
        inst.banned = True
    inst.role = RUNNING


def _success(inst: Instance, op: HistOp, last_failure: tuple[str, int] | None) -> None:
    """An expected result (a probe's "running" or "not running" included)."""
    clear = False
    if op.rc == 7:
        inst.role = STOPPED
        inst.fence = False          # "not running" forgets every earlier failure handling
        clear = True
    elif op.operation == "monitor":
        clear = last_failure == (op.operation, op.interval_ms)
        inst.role = RUNNING
    elif op.operation == "start":
        inst.role = RUNNING
        clear = True
    elif op.operation == "stop":
        inst.role = STOPPED
        clear = True
    if clear:
        inst.failure = False
