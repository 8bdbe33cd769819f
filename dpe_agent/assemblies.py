"""Assemblies through the infrastructure driver: boot, restart, stop.

Driver calls block (a VM boot takes seconds), so they run on the executor pool and report
back through the main loop's queue (``driver_done``). ``busy`` holds the operation in flight
per assembly, so nothing else is asked of it meanwhile. A mixin of :class:`dpe_agent.daemon.Dpe`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace

from dpe_agent.drivers import AssemblySpec
from dpe_agent.observed import AssemblyStatus
from pcloud.deployable import Deployable
from pcloud.states import AssemblyState as A
from pcloud.states import ResourceState as R

STOP_TIMEOUT = 20.0
DEFAULT_BOOT_TIMEOUT = 30.0     # for a driver that does not say its ``boot_timeout``

log = logging.getLogger("dped")


class AssemblyOps:
    """Boot, restart and stop assemblies on the pool (results via the queue)."""

    def _boot_timeout(self, interval: float, misses: int) -> float:
        """Seconds from boot to the first heartbeat: what the driver needs (a VM boots for
        30-50 s under TCG), never less than the assembly's own heartbeat timeout."""
        needed = getattr(self.driver, "boot_timeout", None)
        return max(DEFAULT_BOOT_TIMEOUT if needed is None else float(needed), interval * misses)

    def _boot(self, asm: str) -> None:
        interval, misses = self.dep.assembly(asm).heartbeat()
        boot_timeout = self._boot_timeout(interval, misses)
        if asm in self.tracker.watches:
            self.tracker.restart_watch(asm, time.monotonic(), boot_timeout)
        else:
            self.tracker.expect(asm, interval, misses, time.monotonic(), boot_timeout)
        self._assembly_state(asm, A.STARTING)
        self.busy[asm] = "start"
        self.awaiting.add(asm)
        self.adopting.discard(asm)
        self._submit_driver(asm, "start")

    def _needs_boot(self, asm: str) -> bool:
        """Should be up, is known down, and nothing is under way for it."""
        return (asm not in self.busy and asm not in self.awaiting
                and (asm,) not in self.holds
                and self.observed.status(asm) is AssemblyStatus.FENCED)

    def _stop_assemblies(self, names: list[str]) -> None:
        for asm in names:
            for svc in self.dep.assembly(asm).services:
                if self.state(asm, svc.name) not in (R.STOPPED, R.PENDING, R.STOPPING):
                    self.change_state((asm, svc.name), R.STOPPING)
            if self.state(asm) not in (A.STOPPED, A.PENDING):   # pending: never launched
                self._assembly_state(asm, A.STOPPING)
            self.busy[asm] = "stop"
            self.awaiting.discard(asm)
            self.tracker.forget(asm)
            self._submit_driver(asm, "stop")

    def _submit_driver(self, asm: str, operation: str) -> None:
        spec = self.spec(asm)
        svc_timeouts = [s.stop_timeout or 0 for s in self.dep.assembly(asm).services]
        timeout = max([STOP_TIMEOUT, *svc_timeouts]) + 5

        def work() -> None:
            error = None
            try:
                if operation == "start":
                    login = self.logins.for_boot(asm)   # fresh for every boot
                    self.driver.start(replace(spec, credentials=login))
                elif operation == "fence":
                    login = self.logins.expected(asm)
                    self.driver.fence(spec)
                    self.logins.retire(asm, login)
                else:
                    login = self.logins.expected(asm)
                    self.driver.stop(spec, timeout)
                    self.logins.retire(asm, login)
            except Exception as exc:
                error = str(exc) or type(exc).__name__
            self.queue.put(("driver_done", asm, operation, error))

        self.pool.submit(work)

    def _handle_driver_done(self, asm: str, operation: str, error: str | None) -> None:
        if self.busy.get(asm) == operation:
            del self.busy[asm]
        if operation == "stop":
            self.observed.set_fenced(asm)
            for svc in self.dep.assembly(asm).services:
                self._resource_stopped(asm, svc.name, "assembly stopped")
            self._assembly_state(asm, A.STOPPED, error)
            self._maybe_finish_stop()
            return
        if error:
            log.error("%s of assembly %s failed: %s", operation, asm, error)
            self._assembly_state(asm, A.FAILED, f"{operation} failed: {error}")
            self.holds[(asm,)] = time.monotonic() + 5.0
            self.awaiting.discard(asm)
            self.observed.set_fenced(asm)
        elif operation == "restart":
            self.observed.set_fenced(asm)
        self.dirty = True

    def _stop_removed(self, old: Deployable, removed: list[str]) -> None:
        for asm in removed:
            spec = self.spec(asm, old)
            self.observed.assemblies.pop(asm, None)
            self.pool.submit(self._quiet_stop, spec)
            self.states.pop((asm,), None)
            self.store.delete_state("assembly", asm)

    def _quiet_stop(self, spec: AssemblySpec) -> None:
        try:
            self.driver.stop(spec, STOP_TIMEOUT)
        except Exception as exc:
            log.error("stopping removed assembly %s failed: %s", spec.name, exc)
