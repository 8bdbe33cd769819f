"""The qemu infrastructure driver: each assembly is a ``qemu-system-x86_64`` process on this host.

The same VMs as the libvirt driver (TCG, direct kernel boot, the broker as the only reachable
host service, see ``vmboot``) without a libvirt daemon. Everything about a running VM lives in
the assembly's state directory (pid file, QMP socket, console log), so a restarted DPE finds
its VMs again. Graceful stop is an ACPI power-button press through QMP; fencing is SIGKILL.
A QEMU that exits on its own (a Force Off, a crash, the guest powering off) is reported at once
through a pidfd on it (``watch_deaths``), also for a VM found running by a restarted DPE.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid as uuidlib
from pathlib import Path

from dpe_agent.drivers.base import AssemblySpec, DeathReport, DriverError, PowerState
from dpe_agent.drivers.pidwatch import PidWatch
from dpe_agent.drivers.vmboot import (
    BOOT_TIMEOUT,
    CONSOLE_LOG,
    VmImage,
    boot_disk,
    credentials_option,
    kernel_cmdline,
    last_log_line,
    load_vm_image,
    netdev_option,
    nic_option,
)

PIDFILE = "qemu.pid"
QMP_SOCKET = "qmp.sock"
QEMU_LOG = "qemu.log"
POLL_INTERVAL = 0.05
START_TIMEOUT = 15.0
KILL_TIMEOUT = 10.0


def _read_pid(state_dir: Path) -> int | None:
    try:
        return int((state_dir / PIDFILE).read_text().strip())
    except (OSError, ValueError):
        return None


def _is_our_qemu(pid: int, state_dir: Path) -> bool:
    """True if ``pid`` is a live QEMU started for this state directory (not a reused pid)."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    if stat.rsplit(")", 1)[-1].split()[0] == "Z":
        return False
    return os.fsencode(str(state_dir / PIDFILE)) in argv


class QemuDriver:
    """Runs assemblies as QEMU processes; ``extra["qemu_binary"]`` picks another QEMU."""

    name = "qemu"
    boot_timeout = BOOT_TIMEOUT

    def __init__(self, qemu: str = "qemu-system-x86_64", accel: str = "tcg") -> None:
        self._qemu = qemu
        self._accel = accel
        self._children: dict[Path, subprocess.Popen[bytes]] = {}
        self._report: DeathReport | None = None
        self._names: dict[str, str] = {}          # watched state dir -> assembly name
        self._deaths = PidWatch(self._exited, name="qemu-deaths")

    def watch_deaths(self, report: DeathReport) -> None:
        """Report each VM's QEMU exiting on its own the moment it happens."""
        self._report = report

    def _arm(self, spec: AssemblySpec, pid: int) -> None:
        key = str(self._state_dir(spec))
        if self._report is None or self._deaths.watched(key) == pid:
            return
        self._names[key] = spec.name
        if not self._deaths.arm(key, pid):
            self._exited(key, pid)

    def _exited(self, key: str, pid: int) -> None:
        """Watcher thread: a QEMU exited and nobody here stopped or fenced it."""
        state = Path(key)
        child = self._children.get(state)
        reason, code = f"qemu (pid {pid}) exited", None
        if child is not None and child.pid == pid:
            code = child.wait()
            reason = (f"qemu killed by signal {-code}" if code < 0 else
                      f"qemu exited with status {code}")
        last = last_log_line(state / QEMU_LOG)
        if last and (code is None or code >= 0):     # QEMU's own words on why it ended
            reason += f": {last}"
        report, name = self._report, self._names.get(key)
        if report is not None and name is not None:
            report(name, reason)

    @staticmethod
    def _state_dir(spec: AssemblySpec) -> Path:
        return Path(spec.state_dir).resolve()

    def command(self, spec: AssemblySpec, image: VmImage | None = None) -> list[str]:
        """The QEMU command line of an assembly (run with the state directory as cwd)."""
        image = image or load_vm_image(spec)
        state = self._state_dir(spec)
        argv = [spec.extra.get("qemu_binary", self._qemu),
                "-name", f"pcloud-{spec.deployable}-{spec.name}",
                "-accel", self._accel, "-machine", "pc", "-nodefaults", "-display", "none",
                "-m", str(image.memory_mib), "-smp", str(image.vcpus),
                "-kernel", str(image.kernel), "-initrd", str(image.initrd),
                "-append", kernel_cmdline(spec),
                "-drive", f"file={image.disk},if=virtio,format=qcow2",
                "-netdev", netdev_option(image, spec.broker_url),
                "-device", nic_option(image),
                "-fw_cfg", credentials_option(spec),
                "-serial", f"file:{state / CONSOLE_LOG}",
                "-qmp", f"unix:{QMP_SOCKET},server=on,wait=off",
                "-pidfile", str(state / PIDFILE)]
        with contextlib.suppress(ValueError):
            argv += ["-uuid", str(uuidlib.UUID(spec.uuid))]
        return argv

    def _pid(self, spec: AssemblySpec) -> int | None:
        state = self._state_dir(spec)
        child = self._children.get(state)
        if child is not None and child.poll() is not None:
            del self._children[state]
        pid = _read_pid(state)
        return pid if pid is not None and _is_our_qemu(pid, state) else None

    def start(self, assembly: AssemblySpec) -> None:
        """Launch QEMU and return once it runs (the guest then boots on its own)."""
        if self._pid(assembly) is not None:
            return
        state = self._state_dir(assembly)
        state.mkdir(parents=True, exist_ok=True)
        qemu = assembly.extra.get("qemu_binary", self._qemu)
        if shutil.which(qemu) is None:
            raise DriverError(f"{qemu} not found: install the Debian package qemu-system-x86")
        argv = self.command(assembly, boot_disk(assembly, load_vm_image(assembly)))
        for stale in (PIDFILE, QMP_SOCKET):
            (state / stale).unlink(missing_ok=True)
        with open(state / QEMU_LOG, "ab") as log:
            child = subprocess.Popen(argv, cwd=state, stdin=subprocess.DEVNULL, stdout=log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        self._children[state] = child
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if child.poll() is not None:
                raise DriverError(f"qemu for {assembly.name} exited with {child.returncode}: "
                                  f"{last_log_line(state / QEMU_LOG)}")
            pid = self._pid(assembly)
            if pid is not None:
                self._arm(assembly, pid)
                return
            time.sleep(POLL_INTERVAL)
        self.fence(assembly)
        raise DriverError(f"qemu for {assembly.name} did not start within {START_TIMEOUT}s")

    def _powerdown(self, state: Path) -> bool:
        """Press the ACPI power button through QMP; False if QEMU cannot be reached."""
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(2.0)
                sock.connect(str(state / QMP_SOCKET))
                stream = sock.makefile("rwb")
                stream.readline()
                for command in ("qmp_capabilities", "system_powerdown"):
                    stream.write(json.dumps({"execute": command}).encode() + b"\n")
                    stream.flush()
                    stream.readline()
            return True
        except OSError:
            return False

    def _wait_gone(self, spec: AssemblySpec, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self._pid(spec) is not None:
            if time.monotonic() >= deadline:
                return False
            time.sleep(POLL_INTERVAL)
        return True

    def stop(self, assembly: AssemblySpec, timeout: float) -> None:
        """ACPI shutdown; SIGKILL if the guest has not powered off after ``timeout``."""
        self._deaths.disarm(str(self._state_dir(assembly)))
        if self._pid(assembly) is None:
            return
        if self._powerdown(self._state_dir(assembly)) and self._wait_gone(assembly, timeout):
            return
        self.fence(assembly)

    def fence(self, assembly: AssemblySpec) -> None:
        """SIGKILL the VM's QEMU and wait until it is gone."""
        self._deaths.disarm(str(self._state_dir(assembly)))
        pid = self._pid(assembly)
        if pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        if not self._wait_gone(assembly, KILL_TIMEOUT):
            raise DriverError(f"qemu pid {pid} of {assembly.name} survived SIGKILL")

    def status(self, assembly: AssemblySpec) -> PowerState:
        """RUNNING while the assembly's QEMU process lives (watched from then on, when a
        restarted DPE finds it running)."""
        pid = self._pid(assembly)
        if pid is None:
            return PowerState.STOPPED
        self._arm(assembly, pid)
        return PowerState.RUNNING

