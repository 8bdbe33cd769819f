"""A private libvirtd and virtlogd for the VM demo, tests and benchmarks; commands in guests.

A root libvirtd keeps its configuration, runtime files and state under fixed paths
(``/etc/libvirt``, ``/run/libvirt``, ``/var/lib/libvirt``), so this one runs in a mount
namespace of its own where those three are folders of ``root``, and serves its socket from
``root/sock``: it shares nothing with a libvirtd of the host (none needs to run) and is reached
at ``qemu:///system?socket=<root>/sock/libvirt-sock``. Its QEMU runs as the host's does on
Debian: as ``libvirt-qemu``, with libvirt's default seccomp sandbox (``spawn=deny``), so the
tests prove that the VMs need no helper process and that an unprivileged QEMU reaches the
boot files in pcloud's 0700 state folders (the libvirt driver lets it through).
Domain logs stay in the host's ``/var/log/libvirt/qemu``, where the libvirt driver quotes
them from. ``libvirt_missing()`` says why none can run here.

:func:`guest_exec` runs a command inside a running domain through the QEMU guest agent that
every JEOS carries (``virsh qemu-agent-command``): the guest has no network but the broker
forward, so this is how an operator (or a test) reaches a shell in it.
"""

from __future__ import annotations

import base64
import json
import os
import pwd
import shutil
import signal
import subprocess
import time
from pathlib import Path

START_TIMEOUT = 60.0
EXEC_POLL = 0.2
BOUND = {"etc": "/etc/libvirt", "run": "/run/libvirt", "lib": "/var/lib/libvirt"}

QEMU_CONF = """\
# pcloud's private libvirtd (pcloud/libvirtd.py): QEMU runs as Debian's qemu:///system runs it
user = "libvirt-qemu"
group = "libvirt-qemu"
"""

LIBVIRTD_CONF = """\
unix_sock_dir = "{sock}"
unix_sock_rw_perms = "0700"
auth_unix_rw = "none"
auth_unix_ro = "none"
log_outputs = "3:file:{log}"
"""


def libvirt_missing() -> str | None:
    """Why no private libvirtd can run here, or None."""
    if os.geteuid() != 0:
        return "a libvirtd serving qemu:///system needs root"
    for tool, package in (("libvirtd", "libvirt-daemon"), ("virtlogd", "libvirt-daemon"),
                          ("qemu-system-x86_64", "qemu-system-x86"), ("unshare", "util-linux"),
                          ("qemu-img", "qemu-utils")):
        if shutil.which(tool) is None:
            return f"{tool} missing: install the Debian package {package} (scripts/setup-host " \
                   "--tests)"
    try:
        pwd.getpwnam("libvirt-qemu")
    except KeyError:
        return "no user libvirt-qemu (libvirtd needs it even to run QEMU as root): run " \
               "scripts/setup-host --tests"
    if not Path("/usr/lib/x86_64-linux-gnu/libvirt/connection-driver/"
                "libvirt_driver_qemu.so").exists():
        return "libvirt's QEMU driver missing: install libvirt-daemon-driver-qemu"
    return None


class PrivateLibvirtd:
    """One libvirtd + virtlogd pair in ``root``; ``start()``, use ``uri``, ``stop()``."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.uri = f"qemu:///system?socket={self.root}/sock/libvirt-sock"
        self.log = self.root / "libvirtd.log"
        self._proc: subprocess.Popen | None = None

    def _configure(self) -> None:
        for name in (*BOUND, "sock"):
            (self.root / name).mkdir(parents=True, exist_ok=True, mode=0o700)
        for name in ("run", "lib"):          # as the host's: QEMU reaches its own folders
            (self.root / name).chmod(0o755)
        etc = self.root / "etc"
        if Path("/etc/libvirt").is_dir():
            shutil.copytree("/etc/libvirt", etc, dirs_exist_ok=True)
        shutil.rmtree(etc / "qemu", ignore_errors=True)      # no domains of the host's
        (etc / "qemu.conf").write_text(QEMU_CONF)
        (etc / "libvirtd.conf").write_text(
            LIBVIRTD_CONF.format(sock=self.root / "sock", log=self.log))
        Path("/var/log/libvirt/qemu").mkdir(parents=True, exist_ok=True)

    def start(self) -> str:
        """Start both daemons; returns the URI once libvirtd answers."""
        self._configure()
        for target in BOUND.values():
            Path(target).mkdir(parents=True, exist_ok=True)
        binds = "; ".join(f"mount --bind {self.root / name} {target}"
                          for name, target in BOUND.items())
        # its own pid file: a second private virtlogd (another test's, a bench's) would find
        # /run/virtlogd.pid taken and exit, and its libvirtd could log no domain
        script = (f"set -e; {binds}; virtlogd --pid-file {self.root / 'virtlogd.pid'} & "
                  f"exec libvirtd --config {self.root / 'etc' / 'libvirtd.conf'} "
                  f"--pid-file {self.root / 'libvirtd.pid'}")
        out = open(self.root / "daemons.log", "ab")
        self._proc = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
            stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True)
        out.close()
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"libvirtd exited with {self._proc.returncode}: "
                                   f"{self._tail()}")
            if self._answers():
                return self.uri
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"libvirtd did not answer within {START_TIMEOUT:g} s: {self._tail()}")

    def _answers(self) -> bool:
        done = subprocess.run(["virsh", "-q", "-c", self.uri, "version"],
                              capture_output=True, text=True, timeout=30)
        return done.returncode == 0

    def _tail(self) -> str:
        text = ""
        for name in ("daemons.log", "libvirtd.log"):
            path = self.root / name
            if path.exists():
                text += path.read_text(errors="replace")[-1500:]
        return text.strip() or "(no output)"

    def virsh(self, *args: str) -> subprocess.CompletedProcess:
        """Run ``virsh`` against this daemon (as an operator would)."""
        return subprocess.run(["virsh", "-q", "-c", self.uri, *args], capture_output=True,
                              text=True, timeout=60)

    def stop(self) -> None:
        """Destroy and undefine every domain, stop both daemons, kill any QEMU left."""
        if self._proc is None:
            return
        if self._proc.poll() is None:
            listed = self.virsh("list", "--all", "--name")
            for name in listed.stdout.split():
                self.virsh("destroy", name)
                self.virsh("undefine", name)
            os.killpg(self._proc.pid, signal.SIGTERM)
            try:
                self._proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self._proc.pid, signal.SIGKILL)
                self._proc.wait(10)
        for pidfile in (self.root / "run" / "qemu").glob("*.pid"):
            try:
                os.kill(int(pidfile.read_text().strip()), signal.SIGKILL)
            except (OSError, ValueError):
                continue
        with_group = subprocess.run(["pgrep", "-g", str(self._proc.pid)], capture_output=True,
                                    text=True).stdout.split()
        for pid in with_group:
            try:
                os.kill(int(pid), signal.SIGKILL)
            except OSError:
                continue
        self._proc = None


class GuestExecError(Exception):
    """The guest agent could not run the command (not up yet, no such program, timeout)."""


def _agent(uri: str, domain: str, command: dict) -> dict:
    done = subprocess.run(["virsh", "-q", "-c", uri, "qemu-agent-command", domain,
                           json.dumps(command)], capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        raise GuestExecError(done.stderr.strip() or f"virsh exited with {done.returncode}")
    return json.loads(done.stdout)["return"]


def guest_exec(uri: str, domain: str, argv: list[str], timeout: float = 60.0
               ) -> tuple[int, str]:
    """Run ``argv`` in the guest of ``domain``; returns its exit code and its output."""
    started = _agent(uri, domain, {"execute": "guest-exec", "arguments": {
        "path": argv[0], "arg": argv[1:], "capture-output": True}})
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = _agent(uri, domain, {"execute": "guest-exec-status",
                                      "arguments": {"pid": started["pid"]}})
        if status.get("exited"):
            output = "".join(base64.b64decode(status.get(key, "")).decode(errors="replace")
                             for key in ("out-data", "err-data"))
            return int(status.get("exitcode", -1)), output
        time.sleep(EXEC_POLL)
    raise GuestExecError(f"{' '.join(argv)} did not finish in the guest of {domain} within "
                         f"{timeout:g} s")
