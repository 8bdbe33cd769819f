"""Transition graph execution: which actions may run now, and how one action is run.

:class:`GraphRun` is the bookkeeping of one graph (pure, no threads): an action is launched
once every action it waits for is done; pseudo events complete at once; a failed action, or
new information from outside (:meth:`GraphRun.abort`), stops new launches while running
actions finish, after which the DPE computes a new graph. Running actions in parallel is the
caller's business: it hands ``launch`` a function that queues the action on a thread pool.

:class:`ActionRunner` runs one action (blocking, on a pool thread): resource operations are
method calls on the assembly's guest agent, ``stonith`` fences through the infrastructure
driver, ``clear_failcount`` and ``delete`` only touch the observed state.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from lxml import etree

from dpe_agent.cib import split_rsc_id
from dpe_agent.drivers.base import AssemblySpec, DriverError
from dpe_agent.graph import Action, TransitionGraph
from pcloud.bus import BusError, BusTimeout, MethodError
from pcloud.wire.check import WireError
from pcloud.wire.resource_op import ResourceDef, ResourceOp
from pcloud.wire.results import OpResult

log = logging.getLogger(__name__)

# Pacemaker op-status values.
OP_DONE = 0
OP_TIMEOUT = 2
OP_ERROR = 4

RC_OK = 0
RC_ERROR = 1
RC_NOT_RUNNING = 7
BUS_SLACK = 2.0          # seconds a call may take beyond the operation's own timeout


@dataclass
class ActionResult:
    """What one action did. ``rc`` is an OCF code; ``op_status`` Pacemaker's."""

    rc: int
    op_status: int = OP_DONE
    reason: str | None = None
    output: str | None = None
    started: float = 0.0
    finished: float = 0.0
    no_answer: bool = False   # the bus failed (timeout, no connection): the agent said nothing

    def succeeded(self, action: Action) -> bool:
        """As expected: the target rc, and for probes also 0 (found running: adopted)."""
        if self.op_status != OP_DONE:
            return False
        if action.is_probe:
            return self.rc in (RC_OK, RC_NOT_RUNNING)
        return self.rc == action.target_rc

    def as_expected(self, action: Action) -> bool:
        """Exactly what the graph assumed; anything else means the graph is stale."""
        return self.op_status == OP_DONE and self.rc == action.target_rc


@dataclass
class GraphRun:
    """Progress of one transition graph."""

    graph: TransitionGraph
    transition_id: int
    launch: Callable[[Action], None]
    hold: Callable[[Action], bool] = lambda action: False
    done: set[int] = field(default_factory=set)
    running: set[int] = field(default_factory=set)
    held: set[int] = field(default_factory=set)
    aborted: str | None = None

    def start(self) -> None:
        self._advance()

    def _advance(self) -> None:
        """Launch every ready action; pseudo events complete here, so loop until stable."""
        progressed = True
        while progressed and not self.aborted:
            progressed = False
            for action in self.graph.ready(self.done):
                if action.id in self.running or action.id in self.held:
                    continue
                if action.kind == "pseudo_event":
                    self.done.add(action.id)
                    progressed = True
                elif self.hold(action):
                    self.held.add(action.id)
                else:
                    self.running.add(action.id)
                    self.launch(action)

    def complete(self, action: Action, ok: bool) -> None:
        """An action finished; a failure aborts the rest of the graph."""
        self.running.discard(action.id)
        self.done.add(action.id)
        if not ok:
            self.abort(f"{action.name} failed")
        self._advance()

    def abort(self, reason: str) -> None:
        """Launch nothing more; what runs finishes, then a new graph is computed."""
        if not self.aborted:
            self.aborted = reason

    def abandon_node(self, node: str) -> list[Action]:
        """Stop waiting for the actions running on a lost assembly, and abort.

        Their agent is gone, so their calls can only time out; waiting for that would delay
        the next graph (and the fencing in it) by a whole operation timeout. Their late
        results are ignored by the caller, as for any action on an assembly not online.
        """
        abandoned = [self.graph.by_id[i] for i in self.running
                     if self.graph.by_id[i].node == node]
        for action in abandoned:
            self.running.discard(action.id)
            self.done.add(action.id)
        if abandoned:
            self.abort(f"assembly {node} lost with {len(abandoned)} action(s) running")
        return abandoned

    @property
    def finished(self) -> bool:
        """Nothing runs and nothing more will be launched."""
        if self.running:
            return False
        if self.aborted:
            return True
        return all(a.id in self.held for a in self.graph.ready(self.done))

    @property
    def completed(self) -> bool:
        """Every action ran (none held, none aborted)."""
        return not self.aborted and len(self.done) == len(self.graph)


def agent_class(rsc_class: str | None, provider: str | None, rsc_type: str | None
                ) -> tuple[str, str | None, str | None]:
    """CIB class back to the agent's: ``ocf:pcloud:process`` is the ``process`` class."""
    if rsc_class == "ocf" and provider == "pcloud" and rsc_type == "process":
        return "process", None, None
    return rsc_class or "ocf", provider, rsc_type


class ActionRunner:
    """Runs single graph actions against agents (bus) and the infrastructure (driver)."""

    def __init__(self, bus, deployable: str, driver, spec_of: Callable[[str], AssemblySpec],
                 node_of_uuid: Callable[[str], str | None],
                 service_of: Callable[[str, str], Any] = lambda asm, svc: None,
                 logins=None) -> None:
        self.bus = bus
        self.logins = logins        # AgentLogins: whose answer counts, retired when fenced
        self.service_of = service_of
        self.deployable = deployable
        self.driver = driver
        self.spec_of = spec_of
        self.node_of_uuid = node_of_uuid

    def run(self, action: Action) -> ActionResult:
        started = time.time()
        try:
            if action.kind == "rsc_op":
                result = self._rsc_op(action)
            elif action.kind == "crm_event" and action.operation == "stonith":
                result = self._fence(action)
            else:
                result = ActionResult(RC_OK)
        except Exception as exc:           # an action never takes the DPE down
            log.exception("action %s crashed", action.name)
            result = ActionResult(RC_ERROR, OP_ERROR, reason=f"internal error: {exc}")
        result.started, result.finished = started, time.time()
        return result

    def _rsc_op(self, action: Action) -> ActionResult:
        if action.operation == "delete":
            return ActionResult(RC_OK)
        assembly, service = split_rsc_id(action.resource or "")
        rsc_class, provider, rsc_type = agent_class(action.rsc_class, action.provider,
                                                    action.rsc_type)
        timeout_ms, probe = action.timeout_ms, None
        model = self.service_of(assembly, service)
        if model is not None:
            seconds = {"start": model.start_timeout, "stop": model.stop_timeout}.get(
                action.operation)
            timeout_ms = int(seconds * 1000) if seconds else timeout_ms
            if model.probe is not None:
                probe = dict(model.probe.to_element().attrib)
        resource = ResourceDef(service, rsc_class, provider, rsc_type, action.parameters, probe)
        op = ResourceOp(action.operation, resource, action.interval_ms, max(1, timeout_ms))
        body = etree.tostring(op.to_xml(), encoding="unicode")
        node = action.node or assembly
        queue = f"pcloud.agent.{self.deployable}.{node}"
        timeout = timeout_ms / 1000.0 + BUS_SLACK
        expected = self.logins.expected(node) if self.logins is not None else None
        if self.logins is not None and expected is None:
            return ActionResult(RC_ERROR, OP_ERROR, no_answer=True,
                                reason=f"assembly {node} has no agent login (not booted)")
        try:
            result = self.bus.call(queue, f"resource_{action.operation}", body, timeout=timeout,
                                   senders={expected} if expected else None)
        except BusTimeout as exc:
            return ActionResult(RC_ERROR, OP_TIMEOUT, reason=str(exc), no_answer=True)
        except MethodError as exc:
            return ActionResult(RC_ERROR, OP_ERROR, reason=f"{exc.code}: {exc.message}")
        except BusError as exc:
            return ActionResult(RC_ERROR, OP_ERROR, reason=str(exc), no_answer=True)
        if result is None or result.tag != "op_result":
            return ActionResult(RC_ERROR, OP_ERROR, reason="agent answered without op_result")
        try:
            answer = OpResult.from_xml(result)
        except WireError as exc:
            return ActionResult(RC_ERROR, OP_ERROR, reason=f"agent answered an invalid "
                                                           f"op_result: {exc}")
        status = {"done": OP_DONE, "timeout": OP_TIMEOUT}.get(answer.status, OP_ERROR)
        return ActionResult(answer.rc, status, reason=answer.reason, output=answer.output)

    def _fence(self, action: Action) -> ActionResult:
        nodes = [self.node_of_uuid(uuid) for uuid in action.downed] or [action.node]
        for node in nodes:
            if node is None:
                continue
            login = self.logins.expected(node) if self.logins is not None else None
            try:
                self.driver.fence(self.spec_of(node))
            except DriverError as exc:
                return ActionResult(RC_ERROR, OP_ERROR, reason=f"fencing {node} failed: {exc}")
            if self.logins is not None:
                self.logins.retire(node, login)
        return ActionResult(RC_OK)
