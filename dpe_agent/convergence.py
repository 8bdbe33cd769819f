"""Converging: from the CIB to a transition graph, and the graph's actions to results.

Each time something new is known (``dirty``), and once the running graph has finished, a new
graph is computed from the deployable and the observed state, and the actions it allows run
on the executor pool. Results come back through the queue, go into the observed state
(the next CIB's status section) and into resource states. A mixin of :class:`dpe_agent.daemon.Dpe`.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime

from dpe_agent.cib import build_cib, split_rsc_id
from dpe_agent.engines import get_engine
from dpe_agent.executor import ActionResult, GraphRun
from dpe_agent.graph import Action, TransitionGraph
from dpe_agent.observed import AssemblyStatus, ObservedState
from pcloud.events import EventType
from pcloud.states import AssemblyState as A
from pcloud.states import ResourceState as R

MAX_IDLE_COMPUTES = 25
BLOCKING_RCS = frozenset({2, 5, 6})   # OCF: invalid arguments, not installed, not configured

log = logging.getLogger("dped")


class Convergence:
    """Compute transition graphs and run their actions (main loop only)."""

    def _abort(self, reason: str) -> None:
        self.dirty = True
        self.idle_computes = 0
        if self.run is not None:
            self.run.abort(reason)

    def _converge(self) -> None:
        if self.run is not None and not self.run.finished:
            return
        self.run = None
        self.dirty = False
        if self.stopping:
            self._converge_stop()
            return
        if self.gave_up:
            return
        if not self._bus_steady() or self._awaiting_beats() or self._adopting():
            self.dirty = True           # nothing can be learnt or done now: ask again later
            return
        for asm in self._assemblies():
            if self._needs_boot(asm):
                self._boot(asm)
        self._admit_boots()
        self.idle_computes += 1
        if self.idle_computes > MAX_IDLE_COMPUTES:
            log.error("transitions keep being computed without progress; waiting for news")
            return
        if not self._run_graph(self._compute(self.observed)):
            self.idle_computes = 0

    def _compute(self, observed: ObservedState, stop_all: bool = False) -> TransitionGraph:
        """A transition graph for the deployable as observed (``stop_all``: stop everything)."""
        now = datetime.now(UTC)
        cib = build_cib(self.dep.to_element(), observed, now=now, stop_all=stop_all)
        graph = self.engine.compute(cib, now)
        self.recheck_at = None
        if graph.recheck_by:
            self.recheck_at = time.monotonic() + max(0.0, graph.recheck_by - now.timestamp())
        return graph

    def _run_graph(self, graph: TransitionGraph) -> bool:
        """Start executing a graph; False when it has nothing to do."""
        if len(graph) == 0:
            return False
        self.transition_id += 1
        log.debug("transition %d: %s", self.transition_id, ", ".join(
            a.name for a in graph.actions))
        self.run = GraphRun(graph, self.transition_id, self._launch, self._held)
        self._graph = graph
        self.run.start()
        if self.run.finished:
            self.run = None
        return True

    def _held(self, action: Action) -> bool:
        if action.kind != "rsc_op" or action.operation != "start" or not action.resource:
            return False
        asm, svc = split_rsc_id(action.resource)
        return (asm, svc) in self.holds

    def _launch(self, action: Action) -> None:
        """Called by GraphRun on the main loop: note the state, run the action on the pool."""
        self._note_launch(action)
        run = self.run
        transition = self.transition_id
        launched = self.reconnects if self.bus.connected else -1
        life = self.losses.get(action.node, 0) if action.node else 0

        def work() -> None:
            result = self.runner.run(action)
            self.queue.put(("action_done", run, transition, action, result, launched, life))

        self.pool.submit(work)

    def _note_launch(self, action: Action) -> None:
        if action.kind != "rsc_op" or not action.resource:
            return
        asm, svc = split_rsc_id(action.resource)
        if self._service(asm, svc) is None:
            return
        state = self.state(asm, svc)
        if action.operation == "start":
            self._resource_state(asm, svc, R.STARTING)
        elif action.operation == "stop":
            restarting = any(a.operation == "start" and a.resource == action.resource
                             for a in self._graph.actions)
            if state in (R.FAILED, R.RUNNING) and restarting:
                self._resource_state(asm, svc, R.RESTARTING)
            elif state in (R.RUNNING, R.FAILED) or state == R.BLOCKED and self.stopping:
                self._resource_state(asm, svc, R.STOPPING)   # a blocked one stays blocked

    def _awaiting_beats(self) -> bool:
        """After a reconnect, until each online assembly's agent beats again (or is lost)."""
        self.reprobe_on_beat = {asm for asm in self.reprobe_on_beat
                                if self.observed.status(asm) is AssemblyStatus.ONLINE}
        return bool(self.reprobe_on_beat)

    def _adopting(self) -> bool:
        """After a restart, until each sandbox found running has beaten (or been lost).

        Until then its resources' states are unknown: a graph computed now would take them
        for stopped, and stop their dependents in other assemblies for nothing.
        """
        self.adopting &= self.awaiting
        return bool(self.adopting)

    def _bus_steady(self, since: int | None = None) -> bool:
        """Connected now, and (given the reconnect count at some moment) ever since."""
        return self.bus.connected and (since is None or since == self.reconnects)

    def _handle_action_done(self, run: GraphRun, transition: int, action: Action,
                            result: ActionResult, launched: int = -1, life: int = 0) -> None:
        now = result.finished or time.time()
        ok = result.succeeded(action)
        if result.no_answer and not self.stopping and not self._bus_steady(launched):
            # No answer while our own broker connection was down or flapping: that says
            # nothing about the resource. Not recorded; the next graph asks again.
            log.info("%s got no answer across a broker outage (%s): asking again later",
                     action.name, result.reason)
            if run is not None:
                run.complete(action, False)
            self.dirty = True
            return
        if action.kind == "rsc_op" and action.node and (
                self.observed.status(action.node) is not AssemblyStatus.ONLINE
                or self.busy.get(action.node) == "stop"
                or self.losses.get(action.node, 0) != life):
            # Its assembly was lost (since it was launched: the late failure of a call to the
            # agent that died, arriving after the next boot is online), restarted or is being
            # stopped: the result says nothing about the resource as it is now.
            if run is not None:
                run.complete(action, False)
            self.dirty = True
            return
        self.observed.record(action, result.rc, now=now, op_status=result.op_status,
                             transition_id=transition)
        if action.kind == "crm_event" and action.operation == "stonith" and ok:
            for uuid in action.downed or [action.node]:
                asm = self._node_of_uuid(uuid) or uuid
                if self.stopping:      # a stop failed: fenced, the driver stops it for good
                    self.emit(EventType.FENCING, asm, reason="fenced: a resource would not stop")
                    continue
                self.emit(EventType.FENCING, asm, reason="fenced before restart")
                self._assembly_state(asm, A.RESTARTING, "fenced")
                self.tracker.restart_watch(asm, time.monotonic())
                self.awaiting.discard(asm)
        elif action.kind == "rsc_op" and action.resource:
            self._note_result(action, result, ok)
        if run is not None:
            run.complete(action, result.as_expected(action))
        self.dirty = True

    def _note_result(self, action: Action, result: ActionResult, ok: bool) -> None:
        asm, svc = split_rsc_id(action.resource)
        if self._service(asm, svc) is None:
            if action.operation == "delete":
                self.states.pop((asm, svc), None)
                self.store.delete_state("resource", f"{asm}/{svc}")
            elif action.operation == "stop" and self.state(asm, svc):
                self.change_state((asm, svc), R.STOPPED, "removed from the deployable")
            return
        reason = result.reason or f"{action.operation} returned rc {result.rc}"
        state = self.state(asm, svc)
        if action.operation == "start":
            if ok:
                self.policy.healthy(asm, svc, time.time())
                self._resource_state(asm, svc, R.RUNNING)
            elif result.rc in BLOCKING_RCS:
                self._resource_blocked(asm, svc, reason)
            else:
                self._resource_failed(asm, svc, reason, result.finished)
        elif action.operation == "stop":
            if not ok:
                self._resource_state(asm, svc, R.FAILED, f"stop failed: {reason}")
            elif state == R.STOPPING:
                self._resource_state(asm, svc, R.STOPPED)
        elif action.operation == "monitor":
            if result.rc in BLOCKING_RCS:
                self._resource_blocked(asm, svc, reason)
            elif action.is_probe:
                if result.rc == 0 and state != R.RUNNING:
                    if state not in (R.PENDING, R.FAILED, R.BLOCKED):
                        self.change_state((asm, svc), R.PENDING)
                    self._resource_state(asm, svc, R.RUNNING, "found running")
                elif result.rc == 7 and state == R.RUNNING:
                    self._resource_failed(asm, svc, "probe found it not running",
                                          result.finished)
            elif not ok:
                self._resource_failed(asm, svc, reason, result.finished)


def load_engine(name: str):
    """The named engine, or Pacemaker's when the native one cannot be imported."""
    try:
        return get_engine(name)
    except ImportError as exc:
        log.warning("engine %s unavailable (%s): using pacemaker", name, exc)
        return get_engine("pacemaker")
