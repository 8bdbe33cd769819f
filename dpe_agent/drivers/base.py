"""The infrastructure driver interface: how a DPE boots, stops and fences an assembly.

Every infrastructure (the ``process`` sandbox, libvirt domains, OpenStack servers) implements
the same four operations, so the DPE's policy never knows what an assembly runs on.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from pcloud.identity import Credentials


class DriverError(Exception):
    """An infrastructure operation failed; the message says what and why."""


class PowerState(enum.StrEnum):
    RUNNING = "running"
    STOPPED = "stopped"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class AssemblySpec:
    """Everything a driver needs to run one assembly and the guest agent inside it."""

    deployable: str
    name: str
    uuid: str
    broker_url: str
    state_dir: Path
    image: str | None = None
    heartbeat_interval: float = 1.0
    extra: dict[str, str] = field(default_factory=dict)
    #: this boot's agent login (fresh per boot; the DPE sets it just before ``start``)
    credentials: Credentials | None = field(default=None, repr=False, compare=False)


#: ``report(assembly, reason)``: the infrastructure saw that assembly die (see ``watch_deaths``)
DeathReport = Callable[[str, str], None]


class InfrastructureDriver(Protocol):
    """Boots, stops, fences and inspects assemblies on one kind of infrastructure.

    ``boot_timeout`` is how many seconds after ``start`` the DPE waits for an assembly's first
    heartbeat before it declares it lost and fences it: a process sandbox's agent is up in
    about a second, a VM under TCG needs 30-50 s here, so each driver says what it needs.
    A driver may also offer ``boot_progress(assembly) -> int | None``: a number that moves
    while the machine is visibly working on its boot (a VM's console output, a sandbox's
    CPU time); the DPE then waits longer for a boot that is slow but alive.
    """

    name: str
    boot_timeout: float

    def start(self, assembly: AssemblySpec) -> None:
        """Boot the assembly (its guest agent comes up inside and starts heartbeating)."""

    def stop(self, assembly: AssemblySpec, timeout: float) -> None:
        """Shut the assembly down gracefully, forcing it off after ``timeout`` seconds."""

    def fence(self, assembly: AssemblySpec) -> None:
        """Power the assembly off at once: afterwards nothing of it runs anywhere."""

    def status(self, assembly: AssemblySpec) -> PowerState:
        """Report whether the assembly is powered on."""

    def watch_deaths(self, report: DeathReport) -> None:
        """From now on, call ``report`` (from any thread) as soon as the infrastructure knows
        that an assembly this driver started, or found running through ``status``, died
        without this driver stopping or fencing it. Heartbeats take
        ``interval × misses`` to tell the same; they stay for guests that hang."""


class UnavailableDriver:
    """Stands in for an infrastructure this build or host cannot drive.

    The DPE keeps running with it so it can report the problem (a ``config_error`` event, the
    deployable ``failed``) and answer ``deployable_stop``, instead of exiting and being
    restarted in a loop by the CPE. Nothing can be started; nothing of it ever runs.
    """

    boot_timeout = 0.0

    def __init__(self, name: str, reason: str) -> None:
        self.name = name
        self.reason = reason

    def start(self, assembly: AssemblySpec) -> None:
        raise DriverError(self.reason)

    def stop(self, assembly: AssemblySpec, timeout: float) -> None:
        """Nothing runs: nothing to stop."""

    def fence(self, assembly: AssemblySpec) -> None:
        """Nothing runs: nothing to fence."""

    def status(self, assembly: AssemblySpec) -> PowerState:
        return PowerState.STOPPED

    def watch_deaths(self, report: DeathReport) -> None:
        """Nothing runs: nothing dies."""
