"""End to end on a real VM: an assembly image boots under QEMU (TCG) and its agent heartbeats.

Builds (or reuses) the cached JEOS, creates an assembly for the test broker, boots it with the
qemu driver (isolated user networking, the broker as the only reachable host service), waits
for heartbeats on ``pcloud.heartbeat.<dep>.<asm>``, shuts it down through ACPI, then starts it
and fences it at once. Prints the boot-to-first-heartbeat time.
"""

from __future__ import annotations

import os
import time
import uuid

import pytest
from support.vm import BOOT_TIMEOUT, CACHE, Heartbeats, console_tail, missing

from dpe_agent.drivers.base import AssemblySpec, PowerState
from dpe_agent.drivers.qemu import QemuDriver
from pcloud.broker_admin import admin_for
from pcloud.bus import Bus, BusError
from pcloud.credentials import LocalIssuer
from pcloudsh import images

pytestmark = pytest.mark.slow



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
