"""Assemblies through the infrastructure driver: boot, restart, stop.

Driver calls block (a VM boot takes seconds), so they run on the executor pool and report
back through the main loop's queue (``driver_done``). ``busy`` holds the operation in flight
per assembly, so nothing else is asked of it meanwhile. A mixin of :class:`dpe_agent.daemon.Dpe`.

Boots take turns (:mod:`dpe_agent.bootgate`): an assembly to boot is ``starting`` at once,
but its start is issued only when the gate admits it, and its boot deadline runs from then.
The gate's ceiling is ``boot_concurrency`` in the ``[dpe]`` section of the config file, or
``PCLOUD_BOOT_CONCURRENCY`` (default 32).
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import replace
from functools import cached_property

from dpe_agent.bootgate import DEFAULT_MAXIMUM, BootGate
from dpe_agent.drivers import AssemblySpec
from dpe_agent.observed import AssemblyStatus
from pcloud import config
from pcloud.deployable import Deployable
from pcloud.states import AssemblyState as A
from pcloud.states import ResourceState as R

STOP_TIMEOUT = 20.0
DEFAULT_BOOT_TIMEOUT = 30.0     # for a driver that does not say its ``boot_timeout``
BOOT_CONCURRENCY_ENV = "PCLOUD_BOOT_CONCURRENCY"
MAX_BOOT_CONCURRENCY = 1024

log = logging.getLogger("dped")


class AssemblyOps:
    """Boot, restart and stop assemblies on the pool (results via the queue)."""

    def _boot_timeout(self, interval: float, misses: int) -> float:
        """Seconds from boot to the first heartbeat: what the driver needs (a VM boots for
        30-50 s under TCG), never less than the assembly's own heartbeat timeout."""
        needed = getattr(self.driver, "boot_timeout", None)
        return max(DEFAULT_BOOT_TIMEOUT if needed is None else float(needed), interval * misses)

    @cached_property
    def boot_gate(self) -> BootGate:
        return BootGate(maximum=boot_concurrency())

    def _boot(self, asm: str) -> None:
        """Queue the assembly for a boot turn (:meth:`_admit_boots` issues its start)."""
        self._assembly_state(asm, A.STARTING)
        self.busy[asm] = "start"
        self.awaiting.add(asm)
        self.adopting.discard(asm)
        self.tracker.forget(asm)          # no deadline runs while it waits for its turn
        self.boot_gate.want(asm)

    def _admit_boots(self) -> None:
        """Issue the starts the boot gate admits; each one's boot deadline runs from now."""
        now = time.monotonic()
        for asm in self.boot_gate.admit(now):
            if self.busy.get(asm) != "start" or asm not in self._assemblies():
                self.boot_gate.cancel(asm)       # stopped or removed while it waited
                continue
            interval, misses = self.dep.assembly(asm).heartbeat()
            self.tracker.expect(asm, interval, misses, now, self._boot_timeout(interval, misses))
            self._submit_driver(asm, "start")
        self.logins.hold_refills(bool(self.boot_gate.waiting or self.boot_gate.booting))

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
            self.boot_gate.cancel(asm)
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
            if operation == "start":
                self.boot_gate.failed(asm)
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


def boot_concurrency() -> int:
    """The boot gate's ceiling: ``PCLOUD_BOOT_CONCURRENCY``, else ``boot_concurrency`` in the
    config file's ``[dpe]`` section, else the default; a bad value is logged and ignored."""
    text = os.environ.get(BOOT_CONCURRENCY_ENV) or config.section("dpe").get("boot_concurrency")
    if not text:
        return DEFAULT_MAXIMUM
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= MAX_BOOT_CONCURRENCY:
        log.error("boot_concurrency %r is not a whole number from 1 to %d: using %d", text,
                  MAX_BOOT_CONCURRENCY, DEFAULT_MAXIMUM)
        return DEFAULT_MAXIMUM
    return value
