"""What the VM tests share: the image cache, why a VM cannot be built and booted here, the
console of a booted assembly, and (from :mod:`support.events`) the heartbeat collector."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from pcloudsh.guestfs_support import guestfs_available
from support.events import Heartbeats

__all__ = ["BOOT_TIMEOUT", "CACHE", "Heartbeats", "console_tail", "missing"]

CACHE = Path(os.environ.get("PCLOUD_TEST_CACHE", "/var/tmp/pcloud-test-cache"))
BOOT_TIMEOUT = float(os.environ.get("PCLOUD_TEST_BOOT_TIMEOUT", "300"))


def missing() -> str | None:
    """Why a VM cannot be built and booted here, or None."""
    if os.geteuid() != 0:
        return "building a JEOS needs root (debootstrap)"
    for tool, package in (("debootstrap", "debootstrap"), ("qemu-img", "qemu-utils"),
                          ("qemu-system-x86_64", "qemu-system-x86"),
                          ("nc", "netcat-openbsd")):
        if shutil.which(tool) is None:
            return f"{tool} missing: install the Debian package {package}"
    return guestfs_available()


def console_tail(state_dir: Path) -> str:
    log = state_dir / "console.log"
    return log.read_text(errors="replace")[-3000:] if log.exists() else "(no console log)"
