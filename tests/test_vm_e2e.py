"""End to end on a real VM: an assembly image boots under QEMU (TCG) and its agent heartbeats.

Builds (or reuses) the cached JEOS, creates an assembly for the test broker, boots it with the
qemu driver (isolated user networking, the broker as the only reachable host service), waits
for heartbeats on ``pcloud.heartbeat.<dep>.<asm>``, shuts it down through ACPI, then starts it
and fences it at once. Prints the boot-to-first-heartbeat time.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
import uuid
from pathlib import Path

import pytest
from lxml import etree

from dpe_agent.drivers.base import AssemblySpec, PowerState
from dpe_agent.drivers.qemu import QemuDriver
from pcloud.broker_admin import admin_for
from pcloud.bus import Bus, BusError
from pcloud.credentials import LocalIssuer
from pcloudsh import images
from pcloudsh.guestfs_support import guestfs_available

pytestmark = pytest.mark.slow

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


@pytest.fixture(scope="module")
def client(broker_url):
    reason = missing()
    if reason:
        pytest.skip(reason)
    try:
        bus = Bus(url=broker_url, name="test-vm-e2e").start()
    except BusError as exc:
        pytest.skip(f"no broker at {images.redact_url(broker_url)}: {exc}")
    yield bus
    bus.close()


class Heartbeats:
    """Heartbeats of one assembly with their arrival times; waits have deadlines."""

    def __init__(self) -> None:
        self.arrivals: list[tuple[float, etree._Element]] = []
        self._cond = threading.Condition()

    def __call__(self, msg) -> None:
        elem = etree.fromstring(msg.body.encode())
        with self._cond:
            self.arrivals.append((time.monotonic(), elem))
            self._cond.notify_all()

    def first_after(self, since: float, timeout: float) -> tuple[float, etree._Element]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for when, elem in self.arrivals:
                    if when > since:
                        return when, elem
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no heartbeat within {timeout:.0f} s")
                self._cond.wait(left)


def console_tail(state_dir: Path) -> str:
    log = state_dir / "console.log"
    return log.read_text(errors="replace")[-3000:] if log.exists() else "(no console log)"


def test_assembly_boots_heartbeats_stops_through_acpi_and_is_fenced(client, broker_url,
                                                                   tmp_path):
    catalogue = tmp_path / "catalogue"
    jeos = images.jeos_ensure("debian-12", "x86_64", CACHE / "catalogue",
                              progress=lambda line: print(line, flush=True), replace_stale=True)
    (catalogue / "jeos").mkdir(parents=True)
    (catalogue / "jeos" / jeos.name).symlink_to(jeos.path)
    dep = f"vm{uuid.uuid4().hex[:8]}"
    start = time.monotonic()
    asm = images.assembly_create("web", jeos.name, catalogue, deployable=dep,
                                 broker_url=broker_url, heartbeat_interval=1.0)
    print(f"assembly_create: {time.monotonic() - start:.1f} s")
    beats = Heartbeats()
    sub = client.subscribe(f"pcloud.heartbeat.{dep}.web", beats)
    driver = QemuDriver()
    state = tmp_path / "state"
    issuer = LocalIssuer(admin_for(os.environ["PCLOUD_BROKER_ADMIN"]), dep)
    login = issuer.issue(["web"])["web"]        # what the DPE hands every boot (fw_cfg)
    spec = AssemblySpec(deployable=dep, name="web", uuid=asm.meta["uuid"],
                        broker_url=broker_url, state_dir=state, image=str(asm.path),
                        credentials=login)
    try:
        booted = time.monotonic()
        driver.start(spec)
        assert driver.status(spec) is PowerState.RUNNING
        try:
            when, beat = beats.first_after(booted, BOOT_TIMEOUT)
        except AssertionError:
            pytest.fail(f"no heartbeat after boot; console:\n{console_tail(state)}")
        print(f"boot to first heartbeat: {when - booted:.1f} s")
        assert beat.get("uuid") == asm.meta["uuid"]
        assert (beat.get("deployable"), beat.get("assembly")) == (dep, "web")

        stopping = time.monotonic()
        driver.stop(spec, timeout=90.0)
        assert driver.status(spec) is PowerState.STOPPED
        print(f"graceful stop: {time.monotonic() - stopping:.1f} s")
        assert "reboot: Power down" in console_tail(state), "ACPI shutdown did not power off"

        # one full boot only (TCG boots are slow); fence and reboot through a DPE are in
        # test_vm_dped.py
        driver.start(spec)
        assert driver.status(spec) is PowerState.RUNNING
        driver.fence(spec)
        assert driver.status(spec) is PowerState.STOPPED
    finally:
        driver.fence(spec)
        sub.cancel()
