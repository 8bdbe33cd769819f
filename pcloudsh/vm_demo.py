"""The original acceptance test on real VMs (``make vm-demo``), as an operator would run it.

pacemaker-cloud's own test, on QEMU guests (TCG) under a real libvirtd: build a JEOS, create
an assembly, clone it twice, add ``httpd`` to each (which installs apache2 into each image),
put the three into a deployable and start it on ``libvirt``; then ``killall -9 apache2`` inside
one guest (pcloud restarts it, HTTP answers again) and a Force Off (``virsh destroy``) of
another (pcloud learns it from libvirt at once, fences the domain, boots it again, and httpd
runs in it again). Every step is a ``pcloudsh`` command, shown as typed; ``pcloudsh events``
runs alongside and its live display is shown as ``pcloudsh events |``. Commands inside a guest
go through the QEMU guest agent (the guests have no network but their broker forward).

Runs on the embedded defaults like the main job (a private broker unless PCLOUD_BROKER_URL is
set, ``cped`` as a subprocess) plus a private libvirtd of its own unless PCLOUD_LIBVIRT_URI
names one. Needs root and the packages of ``scripts/setup-host --tests``. ``--jeos-from DIR``
takes a JEOS already built in the image catalogue DIR instead of building one (~3 min).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from pcloud.events import Event
from pcloud.libvirtd import GuestExecError, PrivateLibvirtd, guest_exec, libvirt_missing
from pcloudsh.demo import BIN, Demo, DemoError, _ms, demo_arguments, is_about, run_demo

DEPLOYABLE = "vmshop"
ASSEMBLIES = ("web1", "web2", "web3")
JEOS = ("debian-12", "x86_64")
BOOT_TIMEOUT = 600.0        # three TCG boots at once on a small host
HTTP_CHECK = ("import urllib.request as u; "
              "print(u.urlopen('http://127.0.0.1/', timeout=5).status)")


class VmDemo(Demo):
    """The main job's broker, cped and event log, with VMs under a real libvirtd."""

    def __init__(self, root: Path, broker_url: str | None, jeos_from: Path | None) -> None:
        super().__init__(root, broker_url)
        self.deployable = DEPLOYABLE
        self.log.echo = False        # `pcloudsh events` shows them, as the operator sees them
        self.jeos_from = jeos_from
        self.libvirtd: PrivateLibvirtd | None = None
        self.libvirt_uri = os.environ.get("PCLOUD_LIBVIRT_URI") or ""
        self.watcher: subprocess.Popen[str] | None = None
        self.display: list[str] = []          # what `pcloudsh events` printed
        self.figures: dict[str, float] = {}

    def run(self) -> None:
        self.n.say("pacemaker-cloud's acceptance test on real VMs: three httpd assemblies "
                   "from one JEOS under libvirt,\na service killed inside a guest and a guest "
                   "forced off; pcloud repairs both on its own.")
        self.start_broker()
        self.start_libvirtd()
        self.start_cped()
        self.build_images()
        self.deploy()
        self.kill_httpd("web2")
        self.force_off("web3")
        self.show_status()
        self.stop_all()

    # --- set-up ------------------------------------------------------------------------

    def start_libvirtd(self) -> None:
        if self.libvirt_uri:
            self.n.step(f"libvirt: using PCLOUD_LIBVIRT_URI={self.libvirt_uri}")
            return
        reason = libvirt_missing()
        if reason:
            raise DemoError(reason)
        self.n.step("Starting a private libvirtd and virtlogd (qemu:///system on a socket of "
                    "this demo's own)")
        self.libvirtd = PrivateLibvirtd(self.state_dir.parent / "libvirtd")
        self.libvirt_uri = self.libvirtd.start()
        self.n.note(f"libvirt at {self.libvirt_uri}")

    def environment(self) -> dict[str, str]:
        return dict(super().environment(), PCLOUD_LIBVIRT_URI=self.libvirt_uri,
                    LIBGUESTFS_BACKEND_SETTINGS=os.environ.get(
                        "LIBGUESTFS_BACKEND_SETTINGS", "force_tcg"))

    def pcloudsh(self, *args: str, timeout: float = 900.0) -> str:
        """Run one pcloudsh command as typed, showing its output; a failure ends the demo."""
        self.n.say(f"   $ pcloudsh {' '.join(args)}")
        proc = subprocess.Popen([str(BIN / "pcloudsh"), "--no-live-events", *args],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                env=self.environment())
        assert proc.stdout is not None
        lines = []
        for line in proc.stdout:
            lines.append(line)
            self.n.say(f"     {line.rstrip()}")
        if proc.wait(timeout) != 0:
            raise DemoError(f"pcloudsh {' '.join(args)} failed: {''.join(lines[-3:]).strip()}")
        return "".join(lines)

    def build_images(self) -> None:
        self.n.step("Images: a JEOS, an assembly, two clones, httpd added to each")
        distro, arch = JEOS
        jeos = f"{distro}-{arch}"
        if self.jeos_from is not None:
            built = self.jeos_from / "jeos" / jeos
            if not built.is_dir():
                raise DemoError(f"no JEOS {jeos} in {self.jeos_from}")
            target = self.state_dir / "pcloudsh" / "images" / "jeos"
            target.mkdir(parents=True, exist_ok=True)
            (target / jeos).symlink_to(built.resolve())
            self.n.note(f"JEOS {jeos} taken from {self.jeos_from} (--jeos-from)")
        else:
            self.pcloudsh("jeos_create", distro, arch, timeout=1800)
        first, *clones = ASSEMBLIES
        self.pcloudsh("assembly_create", first, jeos)
        for clone in clones:
            self.pcloudsh("assembly_clone", first, clone)
        for asm in ASSEMBLIES:
            self.pcloudsh("assembly_resource_add", "httpd", "httpd", asm)

    def deploy(self) -> None:
        self.n.step(f"Deployable {DEPLOYABLE}: the three assemblies, started on libvirt")
        self.pcloudsh("deployable_create", DEPLOYABLE, "libvirt")
        for asm in ASSEMBLIES:
            self.pcloudsh("deployable_assembly_add", DEPLOYABLE, asm)
        self.watch_events()
        t0 = time.time()
        self.pcloudsh("deployable_start", DEPLOYABLE)
        self.started_deployable = True
        self.n.note("three QEMU guests boot under TCG (no KVM here): this takes a while")
        self.log.wait_for(lambda e: is_about(e, "deployable_state_change", "running"),
                          BOOT_TIMEOUT, "deployable running", after=t0)
        self.n.note(f"{DEPLOYABLE} is running ({time.time() - t0:.0f} s after the request)")
        for asm in ASSEMBLIES:
            self.wait_http(asm, 60)
        self.n.say("   HTTP GET http://127.0.0.1/ answers 200 inside web1, web2 and web3")

    def watch_events(self) -> None:
        """``pcloudsh events`` alongside, as an operator would keep it open."""
        self.watcher = subprocess.Popen([str(BIN / "pcloudsh"), "events", DEPLOYABLE],
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                        text=True, env=self.environment())

        def relay() -> None:
            assert self.watcher is not None and self.watcher.stdout is not None
            for line in self.watcher.stdout:
                self.display.append(line.rstrip())
                self.n.say(f"   pcloudsh events | {line.rstrip()}")

        threading.Thread(target=relay, name="pcloudsh-events", daemon=True).start()

    # --- inside the guests ---------------------------------------------------------------

    def domain(self, asm: str) -> str:
        return f"pcloud-{DEPLOYABLE}-{asm}"

    def in_guest(self, asm: str, *argv: str) -> tuple[int, str]:
        return guest_exec(self.libvirt_uri, self.domain(asm), list(argv))

    def wait_http(self, asm: str, timeout: float) -> float:
        """Poll HTTP inside the guest until it answers 200; returns when it first did."""
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            try:
                code, out = self.in_guest(asm, "/usr/bin/python3", "-c", HTTP_CHECK)
                if code == 0 and out.strip() == "200":
                    return time.time()
                last = out.strip().splitlines()[-1] if out.strip() else f"exit {code}"
            except GuestExecError as exc:
                last = str(exc)
            time.sleep(0.5)
        raise DemoError(f"HTTP inside {asm} did not answer within {timeout:.0f} s ({last})")

    # --- breaking things -----------------------------------------------------------------

    def kill_httpd(self, asm: str) -> None:
        self.n.step(f"killall -9 apache2 inside {asm} (through the guest agent: pkill -9 -x "
                    "apache2, the JEOS has procps)")
        killed = time.time()
        code, out = self.in_guest(asm, "/usr/bin/pkill", "-9", "-x", "apache2")
        if code != 0:
            raise DemoError(f"pkill in {asm} found no apache2 (exit {code}) {out.strip()}")
        failed = self.log.wait_for(lambda e: is_about(e, "resource_state_change", "failed",
                                                      asm, "httpd"), 120,
                                   f"{asm}/httpd failed", after=killed)
        back = self.log.wait_for(lambda e: is_about(e, "resource_state_change", "running",
                                                    asm, "httpd"), 120,
                                 f"{asm}/httpd running again", after=killed)
        answered = self.wait_http(asm, 60)
        self.figures.update(kill_detected=failed.time.timestamp() - killed,
                            kill_running=back.time.timestamp() - killed,
                            kill_http=answered - killed)
        self.n.say(f"   RECOVERED: {asm}/httpd failed after "
                   f"{_ms(self.figures['kill_detected'])} (its monitor), running again after "
                   f"{_ms(self.figures['kill_running'])}; HTTP answering again after "
                   f"{_ms(self.figures['kill_http'])}")

    def force_off(self, asm: str) -> None:
        self.n.step(f"Force Off of {asm}: virsh destroy {self.domain(asm)} (virt-manager's "
                    "Force Off)")
        forced = time.time()
        done = subprocess.run(["virsh", "-q", "-c", self.libvirt_uri, "destroy",
                               self.domain(asm)], capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            raise DemoError(f"virsh destroy failed: {done.stderr.strip()}")

        def seen(what: str, test, timeout: float = 120) -> Event:
            return self.log.wait_for(test, timeout, what, after=forced)

        failed = seen(f"{asm} failed", lambda e: is_about(e, "assembly_state_change",
                                                          "failed", asm))
        fenced = seen(f"{asm} fenced", lambda e: e.type.value == "fencing" and e.assembly == asm)
        booting = seen(f"{asm} starting", lambda e: is_about(e, "assembly_state_change",
                                                             "starting", asm))
        back = seen(f"{asm}/httpd running again", lambda e: is_about(
            e, "resource_state_change", "running", asm, "httpd"), BOOT_TIMEOUT)
        answered = self.wait_http(asm, 60)
        for key, event in (("off_detected", failed), ("off_fenced", fenced),
                           ("off_restart_begun", booting), ("off_running", back)):
            self.figures[key] = event.time.timestamp() - forced
        self.figures["off_http"] = answered - forced
        self.n.say(f"   RECOVERED: {asm} failed after {_ms(self.figures['off_detected'])} "
                   f"(libvirt's lifecycle event: no heartbeat waited for), fenced after "
                   f"{_ms(self.figures['off_fenced'])}, booting again after "
                   f"{_ms(self.figures['off_restart_begun'])}, httpd running after "
                   f"{_ms(self.figures['off_running'])}, HTTP answering after "
                   f"{_ms(self.figures['off_http'])}")

    def show_status(self) -> None:
        self.n.step(f"What failed and what was restarted: pcloudsh deployable_status "
                    f"{DEPLOYABLE}")
        self.pcloudsh("deployable_status", DEPLOYABLE)

    # --- cleanup -------------------------------------------------------------------------

    def cleanup(self) -> None:
        if self.watcher is not None and self.watcher.poll() is None:
            self.watcher.terminate()
            self.watcher.wait(10)
        super().cleanup()
        if self.libvirtd is not None:
            self.libvirtd.stop()
            self.n.note("libvirtd stopped")


def main(argv: list[str] | None = None) -> int:
    parser = demo_arguments("python -m pcloudsh.vm_demo", "Run pacemaker-cloud's acceptance "
                            "test on real VMs (make vm-demo).")
    parser.add_argument("--jeos-from", type=Path, default=None, metavar="DIR",
                        help="an image catalogue holding the JEOS already (skips its build)")
    args = parser.parse_args(argv)
    demo, code = run_demo(lambda root: VmDemo(root, os.environ.get("PCLOUD_BROKER_URL") or None,
                                              args.jeos_from),
                          args, "pcloud-vm-demo-", errors=(GuestExecError,))
    if code == 0:
        f = demo.figures
        demo.n.say(f"\nDone in {time.monotonic() - demo.n.start:.0f} s. Inside a guest, "
                   f"killed httpd served again after {_ms(f['kill_http'])}; a forced-off VM "
                   f"was booting again after {_ms(f['off_restart_begun'])} and served again "
                   f"after {_ms(f['off_http'])}.")
    return code


if __name__ == "__main__":
    sys.exit(main())
