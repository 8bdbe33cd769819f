"""Lifecycle states of deployables, assemblies and resources, and their allowed transitions.

A leaf module (imports nothing of pcloud): every daemon, the schemas' vocabulary tests and
the shell share it. The values are the contract of DESIGN §3. Code that changes a state goes
through one setter that calls ``check_transition`` and emits the matching event.
"""

from __future__ import annotations

from enum import StrEnum


class DeployableState(StrEnum):
    STARTING = "starting"
    RUNNING = "running"
    DEGRADED = "degraded"
    RECOVERING = "recovering"
    STOPPING = "stopping"
    STOPPED = "stopped"
    FAILED = "failed"


class AssemblyState(StrEnum):
    PENDING = "pending"
    STARTING = "starting"
    RUNNING = "running"
    FAILED = "failed"
    RESTARTING = "restarting"
    STOPPING = "stopping"
    STOPPED = "stopped"


class ResourceState(StrEnum):
    PENDING = "pending"
    STARTING = "starting"
    RUNNING = "running"
    FAILED = "failed"
    RESTARTING = "restarting"
    STOPPING = "stopping"
    STOPPED = "stopped"
    BLOCKED = "blocked"


class TransitionError(ValueError):
    """A state change that the lifecycle does not allow."""


_D = DeployableState
_A = AssemblyState
_R = ResourceState

#: The states a component may be created in (transition from None).
INITIAL: dict[str, frozenset] = {
    "deployable": frozenset({_D.STARTING, _D.STOPPED}),
    "assembly": frozenset({_A.PENDING, _A.STOPPED}),
    "resource": frozenset({_R.PENDING, _R.STOPPED}),
}

DEPLOYABLE_TRANSITIONS: dict[DeployableState, frozenset[DeployableState]] = {
    _D.STARTING: frozenset({
        _D.RUNNING,      # every assembly and resource is running
        _D.DEGRADED,     # started, but some resource failed or is blocked
        _D.RECOVERING,   # a failure escalated while still starting
        _D.STOPPING,     # operator stop during start
        _D.FAILED,       # cannot start at all (infrastructure refused, invalid config)
    }),
    _D.RUNNING: frozenset({
        _D.DEGRADED,     # a resource or assembly failed; it is being restarted
        _D.RECOVERING,   # escalation: the whole deployable is restarted
        _D.STOPPING,     # operator stop
        _D.STARTING,     # reload added components that are now starting
        _D.FAILED,       # unrecoverable (e.g. the infrastructure is gone)
    }),
    _D.DEGRADED: frozenset({
        _D.RUNNING,      # the failed components recovered
        _D.RECOVERING,   # escalation: the whole deployable is restarted
        _D.STOPPING,     # operator stop
        _D.STARTING,     # reload added components that are now starting
        _D.FAILED,       # recovery gave up
    }),
    _D.RECOVERING: frozenset({
        _D.RUNNING,      # the restarted deployable is whole again
        _D.DEGRADED,     # restarted, but some part still fails
        _D.STOPPING,     # operator stop during recovery
        _D.FAILED,       # the restart itself failed
    }),
    _D.STOPPING: frozenset({
        _D.STOPPED,      # every assembly stopped
        _D.FAILED,       # some assembly could not be stopped
    }),
    _D.STOPPED: frozenset({
        _D.STARTING,     # operator start (or CPE re-adoption)
    }),
    _D.FAILED: frozenset({
        _D.STARTING,     # operator start after fixing the cause
        _D.RECOVERING,   # an escalation restart is tried again
        _D.STOPPING,     # operator stop to clean up
        _D.STOPPED,      # nothing was left running
    }),
}

ASSEMBLY_TRANSITIONS: dict[AssemblyState, frozenset[AssemblyState]] = {
    _A.PENDING: frozenset({
        _A.STARTING,     # its driver launches it
        _A.STOPPED,      # deployable stopped before it was launched
    }),
    _A.STARTING: frozenset({
        _A.RUNNING,      # the first heartbeat arrived
        _A.FAILED,       # launch failed or no heartbeat in time
        _A.STOPPING,     # deployable stop during start
    }),
    _A.RUNNING: frozenset({
        _A.FAILED,       # missed heartbeats, or the sandbox/VM died
        _A.RESTARTING,   # escalation from its resources, or of the deployable
        _A.STOPPING,     # deployable stop or assembly removed by reload
    }),
    _A.FAILED: frozenset({
        _A.RESTARTING,   # fenced, then started again
        _A.STOPPING,     # deployable stop
        _A.STOPPED,      # fenced and left down (deployable stop, removal)
    }),
    _A.RESTARTING: frozenset({
        _A.STARTING,     # fencing done, launching again
        _A.FAILED,       # fencing or relaunch failed
        _A.STOPPING,     # deployable stop during restart
    }),
    _A.STOPPING: frozenset({
        _A.STOPPED,      # its driver reports it down
        _A.FAILED,       # it would not stop (then it is fenced)
    }),
    _A.STOPPED: frozenset({
        _A.STARTING,     # deployable start or restart
        _A.PENDING,      # waits for its turn in a new start
    }),
}

RESOURCE_TRANSITIONS: dict[ResourceState, frozenset[ResourceState]] = {
    _R.PENDING: frozenset({
        _R.STARTING,     # its assembly runs and its dependencies are up
        _R.BLOCKED,      # a dependency failed, or its agent reports it cannot run
        _R.STOPPED,      # stopped before it ever started
        _R.RUNNING,      # the agent (re-adopted) reports it already running
        _R.FAILED,       # its probe failed (e.g. OCF rc 2: an invalid parameter)
    }),
    _R.STARTING: frozenset({
        _R.RUNNING,      # start succeeded
        _R.FAILED,       # start failed or timed out
        _R.BLOCKED,      # not installed or not configured (OCF rc 5, 6)
        _R.STOPPING,     # stop requested during start
        _R.PENDING,      # its assembly failed while it was starting
    }),
    _R.RUNNING: frozenset({
        _R.FAILED,       # monitor or probe failed, or the process exited
        _R.RESTARTING,   # a dependency restarted, or an escalation restarts it
        _R.STOPPING,     # stop requested
        _R.PENDING,      # its assembly failed or restarts: it waits for the assembly
    }),
    _R.FAILED: frozenset({
        _R.RESTARTING,   # recovery: stop, then start again
        _R.STOPPING,     # stop requested
        _R.BLOCKED,      # it cannot be restarted (dependency down, stop failed)
        _R.PENDING,      # its assembly restarts (escalation)
        _R.RUNNING,      # it came back by itself before recovery acted
    }),
    _R.RESTARTING: frozenset({
        _R.STARTING,     # the stop half is done
        _R.FAILED,       # the stop half failed
        _R.STOPPING,     # stop requested during the restart
        _R.BLOCKED,      # a dependency went down meanwhile
        _R.PENDING,      # its assembly restarts
    }),
    _R.STOPPING: frozenset({
        _R.STOPPED,      # stop succeeded
        _R.FAILED,       # stop failed (the assembly will be fenced)
        _R.PENDING,      # its assembly went away during the stop
    }),
    _R.STOPPED: frozenset({
        _R.STARTING,     # started again
        _R.PENDING,      # waits for its assembly or dependencies
    }),
    _R.BLOCKED: frozenset({
        _R.STARTING,     # the blocking cause cleared
        _R.RUNNING,      # a re-probe or clean-up found it running (installed meanwhile)
        _R.PENDING,      # its assembly restarts
        _R.STOPPING,     # stop requested
        _R.STOPPED,      # nothing to stop
    }),
}

_TABLES: dict[str, tuple[type[StrEnum], dict]] = {
    "deployable": (DeployableState, DEPLOYABLE_TRANSITIONS),
    "assembly": (AssemblyState, ASSEMBLY_TRANSITIONS),
    "resource": (ResourceState, RESOURCE_TRANSITIONS),
}


def allowed(kind: str, old: str | None) -> frozenset:
    """The states ``kind`` may go to from ``old`` (None: a new component)."""
    enum, table = _table(kind)
    if old is None:
        return INITIAL[kind]
    return table[enum(old)]


def check_transition(kind: str, old: str | None, new: str) -> None:
    """Raise TransitionError unless ``kind`` may go from ``old`` to ``new``.

    ``kind`` is ``deployable``, ``assembly`` or ``resource``; ``old`` None means the component
    is being created. Staying in the same state is not a transition and is always accepted.
    Unknown state names raise TransitionError too.
    """
    enum, _ = _table(kind)
    try:
        target = enum(new)
        source = None if old is None else enum(old)
    except ValueError:
        raise TransitionError(f"unknown {kind} state in {old!r} -> {new!r}") from None
    if source == target:
        return
    if target not in allowed(kind, source):
        where = "creation" if source is None else source.value
        raise TransitionError(f"{kind} may not go from {where} to {target.value}")


def _table(kind: str) -> tuple[type[StrEnum], dict]:
    try:
        return _TABLES[kind]
    except KeyError:
        raise TransitionError(f"unknown component kind {kind!r}") from None
