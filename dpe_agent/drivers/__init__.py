"""Infrastructure drivers by name (the deployable's ``infrastructure`` attribute).

Drivers are imported lazily: the ``libvirt`` driver needs libvirt-python, which a host that only
runs process sandboxes does not have. ``openstack`` is a valid infrastructure name in the
deployable schema but has no driver in this build: asking for it is a clear DriverError.
``AssemblySpec.state_dir`` handed to every driver is the assembly's own directory,
``<state>/dpe/<dep>/assemblies/<asm>``.
"""

from __future__ import annotations

import importlib
from typing import Any

from dpe_agent.drivers.base import (
    AssemblySpec,
    DriverError,
    InfrastructureDriver,
    PowerState,
    UnavailableDriver,
)
from pcloud.infrastructures import DRIVERS

__all__ = ["AssemblySpec", "DriverError", "InfrastructureDriver", "PowerState",
           "UnavailableDriver", "DRIVERS", "get_driver"]



def get_driver(name: str, **options: Any) -> InfrastructureDriver:
    """Instantiate the driver called ``name``; DriverError if unknown or unavailable."""
    if name not in DRIVERS:
        raise DriverError(f"unknown infrastructure {name!r} (known: {', '.join(DRIVERS)})")
    entry = DRIVERS[name]
    if entry is None:
        raise DriverError(f"infrastructure {name!r} is not available in this build "
                          f"(available: {', '.join(k for k, v in DRIVERS.items() if v)})")
    module_name, class_name = entry
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise DriverError(f"infrastructure {name!r} is not available here: {exc}") from exc
    return getattr(module, class_name)(**options)
