"""The infrastructure driver interface: how a DPE boots, stops and fences an assembly.

Every infrastructure (the ``process`` sandbox, libvirt domains, OpenStack servers) implements
the same four operations, so the DPE's policy never knows what an assembly runs on.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol


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


class InfrastructureDriver(Protocol):
    """Boots, stops, fences and inspects assemblies on one kind of infrastructure."""

    name: str

    def start(self, assembly: AssemblySpec) -> None:
        """Boot the assembly (its guest agent comes up inside and starts heartbeating)."""

    def stop(self, assembly: AssemblySpec, timeout: float) -> None:
        """Shut the assembly down gracefully, forcing it off after ``timeout`` seconds."""

    def fence(self, assembly: AssemblySpec) -> None:
        """Power the assembly off at once: afterwards nothing of it runs anywhere."""

    def status(self, assembly: AssemblySpec) -> PowerState:
        """Report whether the assembly is powered on."""
