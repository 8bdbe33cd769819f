"""The libvirt driver's API paths against libvirt's in-process ``test:///default`` hypervisor.

The test hypervisor does not read the image files, so an assembly folder with placeholder
kernel, initrd and disk is enough to exercise define, start, stop, fence, status and undefine.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from support.waiting import wait_until

from dpe_agent.drivers.base import AssemblySpec, DriverError, PowerState
from pcloud.identity import Credentials
from pcloud.image_layout import GUEST_BROKER_ADDR

libvirt = pytest.importorskip(
    "libvirt", reason="libvirt-python missing: pip install libvirt-python "
                      "(needs Debian libvirt-dev and pkg-config)")

from dpe_agent.drivers.libvirt import LibvirtDriver, domain_name, domain_xml  # noqa: E402

TEST_URI = "test:///default"
QEMU_NS = "{http://libvirt.org/schemas/domain/qemu/1.0}"


@pytest.fixture
def assembly_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "assemblies" / "web"
    folder.mkdir(parents=True)
    for name in ("vmlinuz", "initrd.img"):
        (folder / name).write_bytes(b"")
    if shutil.which("qemu-img") is None:
        pytest.skip("qemu-img missing: install the Debian package qemu-utils")
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(folder / "disk.qcow2"),
                    "16M"], check=True)     # each boot's overlay is made on it
    meta = {"disk": "disk.qcow2", "kernel": str(folder / "vmlinuz"),
            "initrd": str(folder / "initrd.img"), "mac": "52:54:00:12:34:56",
            "guest_broker_port": 5700}
    (folder / "assembly.json").write_text(json.dumps(meta))
    return folder


def make_spec(folder: Path, tmp_path: Path, name: str = "web", **extra: str) -> AssemblySpec:
    return AssemblySpec(deployable=f"dep{uuid.uuid4().hex[:8]}", name=name,
                        uuid=str(uuid.uuid4()), broker_url="amqp://u:p@127.0.0.1:5700",
                        state_dir=tmp_path / "state", image=str(folder),
                        extra={"libvirt_uri": TEST_URI, **extra},
                        credentials=Credentials("agent.d.web.0123abcd", "not-used"))


@pytest.fixture
def driver():
    drv = LibvirtDriver()
    yield drv
    drv.close()


def test_domain_xml_boots_kernel_directly_with_broker_only_network(assembly_dir, tmp_path):
    spec = make_spec(assembly_dir, tmp_path)
    root = ET.fromstring(domain_xml(spec))
    assert root.get("type") == "qemu"
    assert root.findtext("name") == domain_name(spec)
    assert root.findtext("uuid") == spec.uuid
    assert root.findtext("os/kernel") == str(assembly_dir / "vmlinuz")
    assert root.findtext("os/initrd") == str(assembly_dir / "initrd.img")
    assert "root=/dev/vda" in root.findtext("os/cmdline")
    assert f"pcloud.assembly=web pcloud.uuid={spec.uuid}" in root.findtext("os/cmdline")
    disk = root.find("devices/disk")
    assert disk.find("target").get("bus") == "virtio"
    assert disk.find("source").get("file") == str(assembly_dir / "disk.qcow2")
    args = [a.get("value") for a in root.find(f"{QEMU_NS}commandline")]
    netdev = args[args.index("-netdev") + 1]
    assert "restrict=on" in netdev
    assert f"guestfwd=tcp:{GUEST_BROKER_ADDR}:5700-tcp:127.0.0.1:5700,,reconnect=1" in netdev
    nic = args[args.index("-device") + 1]
    assert "mac=52:54:00:12:34:56" in nic
    assert "addr=0x10" in nic          # not slot 2, which libvirt gives the disk
    assert root.find("devices/interface") is None
    channel = root.find("devices/channel")      # the host's way in, not a network
    assert channel.get("type") == "unix"
    assert channel.find("target").attrib == {"type": "virtio", "name": "org.qemu.guest_agent.0"}


def test_start_status_fence_start_again(driver, assembly_dir, tmp_path):
    spec = make_spec(assembly_dir, tmp_path)
    assert driver.status(spec) is PowerState.STOPPED
    driver.start(spec)
    assert driver.status(spec) is PowerState.RUNNING
    driver.start(spec)
    assert driver.status(spec) is PowerState.RUNNING
    driver.fence(spec)
    assert driver.status(spec) is PowerState.STOPPED
    driver.fence(spec)
    driver.start(spec)
    assert driver.status(spec) is PowerState.RUNNING
    driver.undefine(spec)


def test_stop_shuts_down_gracefully(driver, assembly_dir, tmp_path):
    spec = make_spec(assembly_dir, tmp_path)
    driver.start(spec)
    driver.stop(spec, timeout=5.0)
    assert driver.status(spec) is PowerState.STOPPED
    driver.stop(spec, timeout=5.0)
    driver.undefine(spec)


def test_domain_is_persistent_and_undefine_removes_it(driver, assembly_dir, tmp_path):
    spec = make_spec(assembly_dir, tmp_path)
    driver.start(spec)
    driver.fence(spec)
    conn = libvirt.open(TEST_URI)
    try:
        dom = conn.lookupByName(domain_name(spec))
        assert dom.UUIDString() == spec.uuid
        assert not dom.isActive()
        driver.undefine(spec)
        with pytest.raises(libvirt.libvirtError):
            conn.lookupByName(domain_name(spec))
    finally:
        conn.close()
    driver.undefine(spec)
    assert driver.status(spec) is PowerState.STOPPED


def test_restart_with_new_uuid_redefines(driver, assembly_dir, tmp_path):
    spec = make_spec(assembly_dir, tmp_path)
    driver.start(spec)
    driver.fence(spec)
    renewed = AssemblySpec(**{**spec.__dict__, "uuid": str(uuid.uuid4())})
    driver.start(renewed)
    assert driver.status(renewed) is PowerState.RUNNING
    driver.undefine(renewed)


def test_image_by_catalogue_name(driver, assembly_dir, tmp_path):
    spec = make_spec(assembly_dir, tmp_path, catalogue_dir=str(tmp_path))
    by_name = AssemblySpec(**{**spec.__dict__, "image": "web"})
    assert ET.fromstring(domain_xml(by_name)).findtext("os/kernel") == str(
        assembly_dir / "vmlinuz")


def test_missing_image_is_a_driver_error(driver, tmp_path):
    spec = make_spec(tmp_path / "nowhere", tmp_path)
    with pytest.raises(DriverError, match="not found"):
        driver.start(spec)
    assert driver.status(spec) is PowerState.STOPPED


def test_image_without_metadata_is_a_driver_error(driver, assembly_dir, tmp_path):
    (assembly_dir / "assembly.json").unlink()
    with pytest.raises(DriverError, match="assembly.json"):
        driver.start(make_spec(assembly_dir, tmp_path))


def test_bad_broker_url_is_a_driver_error(driver, assembly_dir, tmp_path):
    spec = AssemblySpec(**{**make_spec(assembly_dir, tmp_path).__dict__,
                           "broker_url": "http://example.invalid/"})
    with pytest.raises(DriverError, match="broker URL"):
        driver.start(spec)


def test_unreachable_libvirt_is_a_driver_error_and_unknown_status(assembly_dir, tmp_path):
    drv = LibvirtDriver()
    spec = make_spec(assembly_dir, tmp_path, libvirt_uri="test:///nonexistent/file.xml")
    with pytest.raises(DriverError, match="cannot connect"):
        drv.start(spec)
    assert drv.status(spec) is PowerState.UNKNOWN


def test_domain_stopped_from_outside_is_reported_at_once(assembly_dir, tmp_path):
    """A Force Off (destroy from another connection, as virsh or virt-manager) is reported
    from libvirt's lifecycle events, also to a driver that found the domain running; the
    driver's own fence and stop are not."""
    deaths: list[tuple[str, str]] = []
    driver = LibvirtDriver()
    driver.watch_deaths(lambda asm, reason: deaths.append((asm, reason)))
    spec = make_spec(assembly_dir, tmp_path)
    outside = libvirt.open(TEST_URI)
    try:
        driver.start(spec)
        driver.fence(spec)
        driver.start(spec)
        driver.stop(spec, timeout=5)
        driver.start(spec)
        outside.lookupByName(domain_name(spec)).destroy()
        wait_until(lambda: deaths)
        assert deaths == [("web", f"domain {domain_name(spec)} destroyed (forced off)")]

        driver.start(spec)
        adopter = LibvirtDriver()
        adopter.watch_deaths(lambda asm, reason: deaths.append(("adopted", reason)))
        assert adopter.status(spec) is PowerState.RUNNING
        outside.lookupByName(domain_name(spec)).destroy()
        wait_until(lambda: len(deaths) == 3)
        assert sorted(d[0] for d in deaths[1:]) == ["adopted", "web"]
        adopter.undefine(spec)
        adopter.close()
    finally:
        outside.close()
        driver.close()
