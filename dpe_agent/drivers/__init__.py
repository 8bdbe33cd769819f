"""Infrastructure drivers by name (the deployable's ``infrastructure`` attribute).

Drivers are imported lazily: the ``libvirt`` driver needs libvirt-python, which a host that only
runs process sandboxes does not have. ``AssemblySpec.state_dir`` handed to every driver is the
assembly's own directory, ``<state>/dpe/<dep>/assemblies/<asm>``.
"""

from __future__ import annotations

import importlib
from typing import Any

from dpe_agent.drivers.base import (
    AssemblySpec,
    DriverError,
    InfrastructureDriver,
    PowerState,
)

__all__ = ["AssemblySpec", "DriverError", "InfrastructureDriver", "PowerState", "DRIVERS",
           "get_driver"]

DRIVERS: dict[str, tuple[str, tuple[str, ...]]] = {
    "process": ("dpe_agent.drivers.process", ("ProcessDriver",)),
    "libvirt": ("dpe_agent.drivers.libvirt", ("LibvirtDriver",)),
    "qemu": ("dpe_agent.drivers.qemu", ("QemuDriver",)),
    "openstack": ("dpe_agent.drivers.openstack", ("OpenStackDriver", "Driver")),
}


def get_driver(name: str, **options: Any) -> InfrastructureDriver:
    """Instantiate the driver called ``name``; DriverError if unknown or unavailable."""
    if name not in DRIVERS:
        raise DriverError(f"unknown infrastructure {name!r} (known: {', '.join(DRIVERS)})")
    module_name, class_names = DRIVERS[name]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise DriverError(f"infrastructure {name!r} is not available here: {exc}") from exc
    for class_name in class_names:
        cls = getattr(module, class_name, None)
        if cls is not None:
            return cls(**options)
    raise DriverError(f"infrastructure {name!r}: {module_name} defines no driver class")
