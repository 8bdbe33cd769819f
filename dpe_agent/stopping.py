"""Stopping the deployable (``deployable_stop``) or only the DPE (a signal).

A deployable stops in two phases. First its resources, through their agents, in reverse
dependency order: the engine computes a *stop graph* (every resource ``target-role=Stopped``)
over the assemblies that are online, and the graph runs like any other, so each resource goes
``stopping`` then ``stopped``. Stop graphs are computed until one is empty (a probe finding a
resource running gives one more), at most ``MAX_STOP_GRAPHS`` times. Then the assemblies, through
the driver, in waves: assemblies whose services others depend on stop last. Back-off holds are
dropped: a flapping component never delays a stop. A mixin of :class:`dpe_agent.daemon.Dpe`.
"""

from __future__ import annotations

import logging

from dpe_agent.drivers import PowerState
from dpe_agent.observed import AssemblyStatus, ObservedState
from dpe_agent.recovery import policy_for
from pcloud.states import AssemblyState as A
from pcloud.states import DeployableState as D
from pcloud.states import ResourceState as R

log = logging.getLogger("dped")

MAX_STOP_GRAPHS = 4


class Stopping:
    """The deployable stop and signal handling (main loop only)."""

    def _handle_signal(self, signum: int) -> None:
        log.info("signal %d: exiting, leaving the deployable running", signum)
        self.exit_code = 0

    def _begin_stop(self) -> None:
        if self.stopping:
            return
        self.stopping = True
        self.change_state((), D.STOPPING, "deployable_stop", **self._who())
        self.holds.clear()
        self._abort("deployable stopping")

    def _converge_stop(self) -> None:
        """Called once no graph runs: the next stop graph, or on to the assemblies."""
        if self._stop_waves is not None:
            return
        if self.stop_graphs < MAX_STOP_GRAPHS:
            self.stop_graphs += 1
            if self._run_graph(self._compute(self._online_view(), stop_all=True)):
                return
        if any(op != "stop" for op in self.busy.values()):
            return             # a boot or restart is under way: stop after it (driver_done)
        self._stop_waves = self._stop_order()
        self._next_stop_wave()

    def _online_view(self) -> ObservedState:
        """The observed state reduced to online assemblies: only agents that answer are asked
        to stop resources; the others are stopped whole by the driver."""
        view = ObservedState()
        view.assemblies = {name: asm for name, asm in self.observed.assemblies.items()
                           if asm.status is AssemblyStatus.ONLINE}
        return view

    def _stop_order(self) -> list[list[str]]:
        """Assemblies in waves: those whose services others depend on stop last."""
        remaining = set(self._assemblies())
        waves = []
        while remaining:
            needed = {d.first_assembly for d in self.dep.dependencies
                      if d.then_assembly in remaining and d.first_assembly != d.then_assembly}
            wave = sorted(remaining - needed) or sorted(remaining)
            waves.append(wave)
            remaining -= set(wave)
        return waves

    def _next_stop_wave(self) -> None:
        while self._stop_waves:
            wave = self._stop_waves.pop(0)
            live = [a for a in wave if self.state(a) != A.STOPPED or
                    self.driver.status(self.spec(a)) is PowerState.RUNNING]
            if live:
                self._stop_assemblies(live)
                return
        self._maybe_finish_stop()

    def _maybe_finish_stop(self) -> None:
        if not self.stopping or self._stop_waves is None:
            return
        if any(op == "stop" for op in self.busy.values()):
            return
        if self._stop_waves:
            self._next_stop_wave()
            return
        for asm, svc in [(a.name, s.name) for a, s in self.dep.services()]:
            if self.state(asm, svc) != R.PENDING:
                self._resource_stopped(asm, svc, "deployable stopped")
        self._forget_failures()
        self.logins.retire_all()
        self.change_state((), D.STOPPED)
        self.exit_code = 0

    def _forget_failures(self) -> None:
        """A deliberate stop ends the deployable's run: fail counts, last failures and
        escalation windows start from zero at its next start (a DPE restart in between
        keeps them, they are the deployable's memory while it runs)."""
        self.fail_counts.clear()
        self.failures.clear()
        self.policy = policy_for(self.dep)
        self._persist = True
