"""Assemblies the infrastructure saw die: lost at once, not ``interval × misses`` later.

Each driver that can tell (``watch_deaths``: a pidfd on a sandbox or a QEMU process, libvirt's
domain lifecycle events) reports a death from its own thread; the report is queued, and the
main loop sends the assembly down the same path as a heartbeat loss (``_assembly_lost``:
failed, fenced, booted again, escalated when it keeps dying). Heartbeats still catch guests
that hang without dying. A mixin of :class:`dpe_agent.daemon.Dpe`.

A boot that fails (the driver's start raised: QEMU refused its command line, libvirt could not
define the domain) is a failure of the assembly too (``_handle_driver_done``, wrapping
:mod:`dpe_agent.assemblies`' own): counted in the same escalation windows, restarted after the
same growing back-off, and in the end a failed deployable whose reason quotes the
infrastructure's own message; never a tight retry loop.

A report is a claim from another thread about a moment that may have passed, so it is acted
on only while it still holds (:func:`act_on_death`): the assembly is watched and not already
lost, no stop or restart of ours is under way, and the driver still finds it powered off (a
late report of an earlier boot must not fell the new one).
"""

from __future__ import annotations

import logging
import time

from dpe_agent.drivers import DriverError, PowerState
from dpe_agent.heartbeats import Liveness

log = logging.getLogger("dped")


def act_on_death(*, stopping: bool, operation: str | None, liveness: Liveness | None,
                 power: PowerState) -> bool:
    """Whether a reported death makes the assembly lost now.

    ``operation`` is the driver operation in flight for it (a boot may die, a stop or restart
    of ours kills on purpose), ``liveness`` its heartbeat watch (None: not watched, e.g.
    stopped), ``power`` what the driver says now.
    """
    if stopping or operation not in (None, "start"):
        return False
    if liveness is None or liveness is Liveness.LOST:
        return False
    return power is PowerState.STOPPED


class Deaths:
    """Driver death reports turned into lost assemblies (main loop only, except ``_on_death``)."""

    def _watch_deaths(self) -> None:
        """Ask the driver for death reports; call before the first ``status`` (adoption)."""
        watch = getattr(self.driver, "watch_deaths", None)
        if watch is not None:
            watch(self._on_death)

    def _on_death(self, asm: str, reason: str) -> None:
        """Driver thread: only queue (with the moment it was known)."""
        self.queue.put(("death", asm, reason, time.monotonic()))

    def _handle_driver_done(self, asm: str, operation: str, error: str | None) -> None:
        super()._handle_driver_done(asm, operation, error)
        if operation == "start" and error and not self.stopping:
            self._boot_failed(asm, error)

    def _boot_failed(self, asm: str, error: str) -> None:
        """After the assembly ops marked the boot failed (with a short hold): count it as the
        assembly's failure, so it backs off and escalates like any lost assembly."""
        held = self.holds.get((asm,), 0.0)
        self.tracker.declare_lost(asm)
        self._assembly_lost(asm, f"start failed: {error}")
        if held:
            self.holds[(asm,)] = max(held, self.holds.get((asm,), 0.0))

    def _handle_death(self, asm: str, reason: str, known: float) -> None:
        if asm not in self._assemblies():
            return
        try:
            power = self.driver.status(self.spec(asm))
        except DriverError:
            power = PowerState.UNKNOWN
        if not act_on_death(stopping=self.stopping, operation=self.busy.get(asm),
                            liveness=self.tracker.liveness(asm), power=power):
            log.info("death of %s reported (%s): not acted on (%s, assembly %s)", asm, reason,
                     power, self.busy.get(asm) or self.tracker.liveness(asm))
            return
        log.info("assembly %s died (%s), known %.0f ms ago: lost without waiting for "
                 "heartbeats", asm, reason, (time.monotonic() - known) * 1000)
        if self.tracker.declare_lost(asm):
            self._assembly_lost(asm, f"{reason} (reported by the {self.driver.name} driver)")
