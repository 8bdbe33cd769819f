"""The infrastructures pcloud knows, which driver runs each, and whether this host can.

One registry that both sides read: the DPE builds its driver from it
(:func:`dpe_agent.drivers.get_driver`), the CPE refuses a ``deployable_start`` this host cannot
run before anything is stored (:func:`problem`). Drivers are named by module path, never
imported here, so the CPE never loads the DPE's driver code.
"""

from __future__ import annotations

import importlib.util
import os
import shutil

#: infrastructure name -> (module, driver class); None: accepted by the schema, not built
DRIVERS: dict[str, tuple[str, str] | None] = {
    "process": ("dpe_agent.drivers.process", "ProcessDriver"),
    "libvirt": ("dpe_agent.drivers.libvirt", "LibvirtDriver"),
    "qemu": ("dpe_agent.drivers.qemu", "QemuDriver"),
    "openstack": None,
}

#: Benchmarks only: ``bench/scale.py`` sets this variable (to its simulator's socket) in the
#: environment of the cped it starts, which hands it on to its dpeds; ``process`` deployables
#: then boot simulated assemblies (``bench/simdriver.py``) instead of sandboxes. Nothing on
#: the bus or in a deployable can select that driver: only whoever starts the daemons.
SIMULATOR_SWITCH = "PCLOUD_BENCH_SIMULATOR"
if os.environ.get(SIMULATOR_SWITCH):
    DRIVERS["process"] = ("bench.simdriver", "SimulatedDriver")


def problem(infrastructure: str, allowed: frozenset[str] | None = None) -> str | None:
    """Why ``infrastructure`` cannot run on this host, or None. ``allowed``: the
    infrastructures the caller's config permits (None: all)."""
    if allowed is not None and infrastructure not in allowed:
        return (f"infrastructure {infrastructure!r} is switched off on this CPE (its config "
                f"allows: {', '.join(sorted(allowed)) or 'none'})")
    if infrastructure not in DRIVERS:
        return f"unknown infrastructure {infrastructure!r} (known: {', '.join(DRIVERS)})"
    if DRIVERS[infrastructure] is None:
        return (f"infrastructure {infrastructure!r} is not available in this build "
                f"(available: {', '.join(name for name, entry in DRIVERS.items() if entry)})")
    if infrastructure == "libvirt" and importlib.util.find_spec("libvirt") is None:
        return ("infrastructure 'libvirt' needs libvirt-python, which is not installed here "
                "(apt-get install python3-libvirt, or pip install libvirt-python)")
    if infrastructure == "qemu" and shutil.which("qemu-system-x86_64") is None:
        return ("infrastructure 'qemu' needs qemu-system-x86_64, which is not installed here "
                "(apt-get install qemu-system-x86)")
    return None
