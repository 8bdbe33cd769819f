"""The qemu driver's process handling with a real QEMU that never gets to boot an OS.

The VM boots the host's kernel on an empty disk: QEMU runs (the guest panics, QEMU does not
exit), which is all start, status, re-adoption, stop and fence need. The full boot of an
assembly image is in test_vm_e2e.py.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import uuid
from pathlib import Path

import pytest
from support.waiting import wait_until

from dpe_agent.drivers.base import AssemblySpec, DriverError, PowerState
from dpe_agent.drivers.qemu import PIDFILE, QemuDriver
from pcloud.identity import Credentials

HOST_KERNELS = sorted(Path("/boot").glob("vmlinuz-*"))


def missing() -> str | None:
    if shutil.which("qemu-system-x86_64") is None:
        return "qemu-system-x86_64 missing: install the Debian package qemu-system-x86"
    if shutil.which("qemu-img") is None:
        return "qemu-img missing: install the Debian package qemu-utils"
    if shutil.which("nc") is None:
        return "nc missing: install the Debian package netcat-openbsd"
    if not HOST_KERNELS:
        return "no kernel in /boot: install the Debian package linux-image-amd64"
    return None


@pytest.fixture
def spec(tmp_path: Path) -> AssemblySpec:
    folder = tmp_path / "asm"
    folder.mkdir()
    kernel = HOST_KERNELS[-1] if HOST_KERNELS else folder / "vmlinuz"
    initrd = kernel.with_name(kernel.name.replace("vmlinuz", "initrd.img"))
    if shutil.which("qemu-img"):
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(folder / "disk.qcow2"),
                        "64M"], check=True)
    meta = {"kernel": str(kernel), "initrd": str(initrd), "mac": "52:54:00:00:00:01",
            "guest_broker_port": 5700}
    (folder / "assembly.json").write_text(json.dumps(meta))
    return AssemblySpec(deployable="dep1", name="web", uuid=str(uuid.uuid4()),
                        broker_url="amqp://u:p@127.0.0.1:5700", state_dir=tmp_path / "state",
                        image=str(folder), extra={"memory_mib": "128"},
                        credentials=Credentials("agent.dep1.web.0123abcd", "not-used"))


def test_command_line_isolates_the_guest(spec):
    if missing():
        pytest.skip(missing())
    argv = QemuDriver().command(spec)
    assert argv[argv.index("-accel") + 1] == "tcg"
    netdev = argv[argv.index("-netdev") + 1]
    assert netdev.startswith("user,") and "restrict=on" in netdev
    # a forward QEMU connects itself: libvirt's seccomp sandbox kills a QEMU that forks
    assert "guestfwd=tcp:10.0.2.100:5700-tcp:127.0.0.1:5700,,reconnect=1" in netdev
    assert "cmd:" not in netdev
    assert argv[argv.index("-device") + 1].endswith(",addr=0x10")
    assert argv[argv.index("-m") + 1] == "128"
    assert argv[argv.index("-uuid") + 1] == spec.uuid
    cmdline = argv[argv.index("-append") + 1].split()
    assert cmdline[:3] == ["root=/dev/vda", "rw", "console=ttyS0"]
    assert {"pcloud.deployable=dep1", "pcloud.assembly=web", f"pcloud.uuid={spec.uuid}",
            "pcloud.heartbeat_interval=1", "systemd.hostname=web"} <= set(cmdline)


def test_identity_that_cannot_go_on_the_kernel_command_line_is_refused(spec):
    bad = AssemblySpec(**{**spec.__dict__, "uuid": "two words"})
    with pytest.raises(DriverError, match="kernel command line"):
        QemuDriver().command(bad)


def test_stale_pidfile_of_another_process_is_not_running(spec):
    spec.state_dir.mkdir(parents=True)
    (spec.state_dir / PIDFILE).write_text(f"{os.getpid()}\n")
    driver = QemuDriver()
    assert driver.status(spec) is PowerState.STOPPED
    driver.fence(spec)


def test_qemu_that_cannot_start_is_a_driver_error(spec):
    if missing():
        pytest.skip(missing())
    bad = AssemblySpec(**{**spec.__dict__, "extra": {"qemu_binary": "false"}})
    with pytest.raises(DriverError, match="exited with 1"):
        QemuDriver().start(bad)
    assert QemuDriver().status(bad) is PowerState.STOPPED


def test_start_fence_adopt_and_stop(spec):
    if missing():
        pytest.skip(missing())
    driver = QemuDriver()
    driver.start(spec)
    try:
        assert driver.status(spec) is PowerState.RUNNING
        driver.start(spec)
        driver.fence(spec)
        assert driver.status(spec) is PowerState.STOPPED
        driver.start(spec)
        adopter = QemuDriver()
        assert adopter.status(spec) is PowerState.RUNNING
        adopter.stop(spec, timeout=0.5)
        assert adopter.status(spec) is PowerState.STOPPED
        assert driver.status(spec) is PowerState.STOPPED
    finally:
        driver.fence(spec)


def test_qemu_exit_is_reported_at_once_fences_and_stops_are_not(spec):
    """QEMU killed from outside is reported with how it ended, by the driver that started it
    and by one that found it running (a restarted DPE); the driver's own fence is not."""
    if missing():
        pytest.skip(missing())
    deaths: list[tuple[str, str]] = []
    driver = QemuDriver()
    driver.watch_deaths(lambda asm, reason: deaths.append((asm, reason)))
    driver.start(spec)
    try:
        driver.fence(spec)
        driver.start(spec)
        os.kill(int((spec.state_dir / PIDFILE).read_text()), signal.SIGKILL)
        wait_until(lambda: deaths, what="the death report")
        assert deaths == [("web", "qemu killed by signal 9")]
        driver.start(spec)
        adopter = QemuDriver()
        adopter.watch_deaths(lambda asm, reason: deaths.append((asm, reason)))
        assert adopter.status(spec) is PowerState.RUNNING
        pid = int((spec.state_dir / PIDFILE).read_text())
        os.kill(pid, signal.SIGTERM)
        wait_until(lambda: len(deaths) >= 3, what="both reports")   # both drivers watch it
        adopted, own = sorted(reason for _, reason in deaths[1:])
        assert adopted.startswith(f"qemu (pid {pid}) exited"), deaths
        # QEMU ends on SIGTERM by itself, with a line in its log
        assert own.startswith(("qemu exited with status 0", "qemu killed by signal 15")), deaths
    finally:
        driver.fence(spec)
