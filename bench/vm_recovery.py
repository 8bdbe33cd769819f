"""VM recovery time under QEMU TCG: a Force Off until the assembly's resource runs again.

One deployable of one VM assembly (an image from the cached JEOS, one ``process`` resource,
heartbeats 1 s × 3) under a DPE, per driver: ``qemu`` (QEMU SIGKILLed) and ``libvirt`` on a
private real libvirtd (``virsh destroy``, virt-manager's Force Off). Timed from the power-off,
on the DPE's event clock: assembly ``failed`` (detection), ``starting`` (restart begun),
``running`` (the new boot's first heartbeat) and the resource ``running``. Also the first
boot, start to first heartbeat. With libvirt, each new boot's milestones on the guest's own
clock (seconds since its kernel started: systemd started, the agent's unit started, the agent
connected and ready), read through the QEMU guest agent. Needs root, the cached JEOS
(built on first use, ~3 min; ``PCLOUD_TEST_CACHE`` moves the cache), and for libvirt the
packages of ``scripts/setup-host --tests``. Run:
``.venv/bin/python bench/vm_recovery.py [--kills N] [--drivers qemu,libvirt]``.
Target (issue 16): a VM forced off serves again in ≤ 15 s.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.death import bench_bus, figures  # noqa: E402
from bench.mttr import Watcher  # noqa: E402
from dpe_agent.daemon import Dpe, run_in_thread  # noqa: E402
from dpe_agent.drivers.base import AssemblySpec  # noqa: E402
from pcloud.bus import Bus  # noqa: E402
from pcloud.deployable import Deployable  # noqa: E402
from pcloudsh import images  # noqa: E402

CACHE = Path(os.environ.get("PCLOUD_TEST_CACHE", "/var/tmp/pcloud-test-cache"))
UPTIME = 6.0
AGENT_UNIT = "pcloud-guest-agent.service"
BOOT = 600.0


def document(name: str, infrastructure: str, image: str) -> str:
    return (f'<deployable name="{name}" infrastructure="{infrastructure}"><assemblies>'
            f'<assembly name="web" image="{image}" heartbeat_interval="1" '
            f'heartbeat_misses="3"><services><service name="sleeper" class="process" '
            f'monitor_interval="5"><parameters><parameter name="command" '
            f'value="sleep infinity"/></parameters></service></services></assembly>'
            f'</assemblies></deployable>')


def run(label: str, infrastructure: str, driver, kill: Callable[[AssemblySpec], None],
        image: str, workdir: Path, url: str, bus: Bus, kills: int,
        inspect: Callable[[AssemblySpec], dict[str, float]] | None = None) -> None:
    name = f"vmr{uuid.uuid4().hex[:6]}"
    watch = Watcher(bus, name)
    dpe = Dpe(Deployable.from_xml(document(name, infrastructure, image)), workdir,
              broker_url=url, driver=driver)
    began = time.time()
    thread = run_in_thread(dpe)
    spec = AssemblySpec(name, "web", "u", url, workdir / "dpe" / name / "assemblies" / "web")
    rows: dict[str, list[float]] = {k: [] for k in ("failed", "restart begun", "first heartbeat",
                                                    "resource running")}
    try:
        _, up = watch.wait(0, timeout=BOOT, type="assembly_state_change", assembly="web",
                           state="running")
        print(f"{label}: first boot, DPE start -> first heartbeat "
              f"{up.time.timestamp() - began:.1f} s", flush=True)
        watch.wait(0, timeout=120, resource="sleeper", state="running")
        for _ in range(kills):
            time.sleep(UPTIME)
            killed = time.time()
            kill(spec)
            for key, match in (("failed", {"type": "assembly_state_change", "state": "failed"}),
                               ("restart begun", {"type": "assembly_state_change",
                                                  "state": "starting"}),
                               ("first heartbeat", {"type": "assembly_state_change",
                                                    "state": "running"}),
                               ("resource running", {"type": "resource_state_change",
                                                     "resource": "sleeper",
                                                     "state": "running"})):
                _, event = watch.wait(killed, timeout=BOOT, assembly="web", **match)
                rows[key].append(event.time.timestamp() - killed)
            for key, seconds in (inspect(spec) if inspect else {}).items():
                rows.setdefault(key, []).append(seconds)
        for key, values in rows.items():
            where = "guest clock:" if key.startswith("guest") else "power-off ->"
            print(figures(f"{label}: {where} {key}", values), flush=True)
    finally:
        try:
            bus.call(f"pcloud.dpe.{name}", "deployable_stop", f'<deployable name="{name}"/>',
                     timeout=60)
            thread.join(180)
        finally:
            watch.sub.cancel()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=3)
    parser.add_argument("--drivers", default="qemu,libvirt")
    args = parser.parse_args()
    drivers = args.drivers.split(",")
    workdir = Path(tempfile.mkdtemp(prefix="pcloud-vmr-"))
    try:
        with bench_bus(workdir, "bench-vm-recovery") as (url, bus):
            measure(drivers, args.kills, workdir, url, bus)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)   # after the broker stopped: its files
    print(json.dumps({"load": os.getloadavg()}))
    return 0


def guest_boot_times(uri: str, domain: str) -> dict[str, float]:
    """The boot's milestones in seconds since the guest's kernel started, from systemd."""
    from pcloud.libvirtd import GuestExecError, guest_exec

    script = ("systemctl show -p UserspaceTimestampMonotonic; systemctl show -p "
              "InactiveExitTimestampMonotonic -p ActiveEnterTimestampMonotonic " + AGENT_UNIT)
    deadline = time.monotonic() + 30
    while True:
        try:
            _, output = guest_exec(uri, domain, ["/bin/sh", "-c", script])
            break
        except GuestExecError:
            if time.monotonic() > deadline:
                return {}
            time.sleep(1)
    values = dict(line.split("=", 1) for line in output.splitlines() if "=" in line)
    names = {"UserspaceTimestampMonotonic": "guest: systemd started (kernel + initrd)",
             "InactiveExitTimestampMonotonic": "guest: agent started",
             "ActiveEnterTimestampMonotonic": "guest: agent connected (READY=1)"}
    return {name: int(values[key]) / 1e6 for key, name in names.items()
            if values.get(key, "0").isdigit() and int(values[key])}


def measure(drivers: list[str], kills: int, workdir: Path, url: str, bus: Bus) -> None:
    catalogue = workdir / "catalogue"
    jeos = images.jeos_ensure("debian-12", "x86_64", CACHE / "catalogue", replace_stale=True)
    (catalogue / "jeos").mkdir(parents=True)
    (catalogue / "jeos" / jeos.name).symlink_to(jeos.path)
    image = str(images.assembly_create("web", jeos.name, catalogue, broker_url=url).path)
    if "qemu" in drivers:
        from dpe_agent.drivers.qemu import PIDFILE, QemuDriver
        run("qemu", "qemu", QemuDriver(),
            lambda spec: os.kill(int((spec.state_dir / PIDFILE).read_text()), signal.SIGKILL),
            image, workdir, url, bus, kills)
    if "libvirt" in drivers:
        from dpe_agent.drivers.libvirt import LibvirtDriver, domain_name
        from pcloud.libvirtd import PrivateLibvirtd, libvirt_missing
        reason = libvirt_missing()
        if reason:
            print(f"libvirt: skipped ({reason})")
            return
        daemon = PrivateLibvirtd(workdir / "libvirtd")
        daemon.start()
        try:
            run("libvirt", "libvirt", LibvirtDriver(uri=daemon.uri),
                lambda spec: daemon.virsh("destroy", domain_name(spec)),
                image, workdir, url, bus, kills,
                inspect=lambda spec: guest_boot_times(daemon.uri, domain_name(spec)))
        finally:
            daemon.stop()


if __name__ == "__main__":
    sys.exit(main())
