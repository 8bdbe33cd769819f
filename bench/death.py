"""Power-off → restart begun, per infrastructure driver: a dead assembly is known at once.

A DPE runs one deployable of two assemblies with heartbeats of 1 s × 3 misses. The bench
powers one assembly off from outside, the way an operator or a crash would, and times from
that moment to the DPE's ``assembly failed`` event (detection) and to its ``starting`` event
(restart begun); both are stamped by the DPE on this host's clock. Drivers:

- ``process``: SIGKILL of the sandbox; and the same with the driver's death reports switched
  off (``process-heartbeats``), the peer that shows what heartbeats alone give;
- ``qemu``: SIGKILL of a QEMU (booting the host's kernel on an empty disk: no guest agent, so
  the assembly is killed while it boots; what is timed is the same death → restart path);
- ``libvirt``: ``destroy`` (virsh's and virt-manager's Force Off) from a second connection to
  libvirt's in-process ``test:///default`` hypervisor.

Uses PCLOUD_BROKER_URL, or starts a private broker node of its own. Run:
``.venv/bin/python bench/death.py [--kills N] [--drivers process,qemu,libvirt]``. Target:
restart begun ≤ 0.1 s after the power-off on every driver (issue 16).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.mttr import Watcher  # noqa: E402
from dpe_agent.daemon import Dpe, run_in_thread  # noqa: E402
from dpe_agent.drivers.base import AssemblySpec  # noqa: E402
from dpe_agent.drivers.process import ProcessDriver  # noqa: E402
from pcloud.bus import Bus  # noqa: E402
from pcloud.deployable import Deployable  # noqa: E402

HB_INTERVAL, HB_MISSES = 1.0, 3
UPTIME = 5.5          # seconds between kills: longer than the back-off's healthy uptime


def figures(label: str, values: list[float]) -> str:
    ordered = sorted(values)
    p99 = ordered[min(len(ordered) - 1, int(round(0.99 * (len(ordered) - 1))))]
    return (f"{label:<46} median {statistics.median(ordered) * 1000:8.1f} ms  "
            f"p99 {p99 * 1000:8.1f} ms  n={len(ordered)}")


def document(name: str, infrastructure: str, image: str | None) -> str:
    image_attr = f' image="{image}"' if image else ""
    assemblies = "".join(
        f'<assembly name="{a}"{image_attr} heartbeat_interval="{HB_INTERVAL:g}" '
        f'heartbeat_misses="{HB_MISSES}"><services/></assembly>' for a in ("a", "b"))
    return (f'<deployable name="{name}" infrastructure="{infrastructure}">'
            f'<assemblies>{assemblies}</assemblies></deployable>')


def placeholder_image(folder: Path) -> Path:
    """An assembly folder booting the host's kernel on an empty disk (QEMU runs, no OS)."""
    folder.mkdir(parents=True)
    kernels = sorted(Path("/boot").glob("vmlinuz-*"))
    if not kernels:
        raise SystemExit("no kernel in /boot: install linux-image-amd64")
    initrd = kernels[-1].with_name(kernels[-1].name.replace("vmlinuz", "initrd.img"))
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(folder / "disk.qcow2"),
                    "64M"], check=True)
    (folder / "assembly.json").write_text(json.dumps(
        {"disk": "disk.qcow2", "kernel": str(kernels[-1]), "initrd": str(initrd),
         "mac": "52:54:00:00:00:01", "guest_broker_port": 5700}))
    return folder


class Quiet(ProcessDriver):
    """The process driver with its death reports off: only heartbeats tell (the peer)."""

    def watch_deaths(self, report) -> None:
        return None


def kill_process(spec: AssemblySpec) -> None:
    os.kill(json.loads((spec.state_dir / "sandbox.pid").read_text())["pid"], signal.SIGKILL)


def kill_qemu(spec: AssemblySpec) -> None:
    os.kill(int((spec.state_dir / "qemu.pid").read_text()), signal.SIGKILL)


def run(label: str, infrastructure: str, driver, kill: Callable[[AssemblySpec], None],
        workdir: Path, url: str, bus: Bus, kills: int, image: str | None = None,
        boot_event: str = "running", per_dpe: int | None = None) -> None:
    """``kills`` power-offs of assembly ``a``, ``per_dpe`` per DPE (a VM without an agent
    never counts as healthy, so after 3 kills its restarts would be held by the back-off)."""
    detect: list[float] = []
    begun: list[float] = []
    while len(detect) < kills:
        rounds = min(kills - len(detect), per_dpe or kills)
        one_dpe(infrastructure, driver, kill, workdir, url, bus, rounds, image, boot_event,
                detect, begun)
    print(figures(f"{label}: power-off -> failed", detect))
    print(figures(f"{label}: power-off -> restart begun", begun), flush=True)


def one_dpe(infrastructure: str, driver, kill: Callable[[AssemblySpec], None], workdir: Path,
            url: str, bus: Bus, kills: int, image: str | None, boot_event: str,
            detect: list[float], begun: list[float]) -> None:
    name = f"death{uuid.uuid4().hex[:6]}"
    watch = Watcher(bus, name)
    dpe = Dpe(Deployable.from_xml(document(name, infrastructure, image)), workdir,
              broker_url=url, driver=driver)
    thread = run_in_thread(dpe)
    spec = AssemblySpec(name, "a", "u", url, workdir / "dpe" / name / "assemblies" / "a")
    try:
        watch.wait(0, timeout=120, type="assembly_state_change", assembly="a",
                   state=boot_event)
        for _ in range(kills):
            time.sleep(UPTIME)
            killed = time.time()
            kill(spec)
            _, failed = watch.wait(killed, timeout=60, type="assembly_state_change",
                                   assembly="a", state="failed")
            _, boot = watch.wait(killed, timeout=60, type="assembly_state_change",
                                 assembly="a", state="starting")
            detect.append(failed.time.timestamp() - killed)
            begun.append(boot.time.timestamp() - killed)
            watch.wait(killed, timeout=120, type="assembly_state_change", assembly="a",
                       state=boot_event)
    finally:
        try:
            bus.call(f"pcloud.dpe.{name}", "deployable_stop", f'<deployable name="{name}"/>',
                     timeout=30)
            thread.join(120)
        finally:
            watch.sub.cancel()


@contextlib.contextmanager
def bench_bus(workdir: Path, name: str) -> Iterator[tuple[str, Bus]]:
    """The broker URL and a started bus: PCLOUD_BROKER_URL's broker, or a private node on
    free ports (another may hold the default), stopped afterwards."""
    private = None
    if not os.environ.get("PCLOUD_BROKER_URL"):
        from pcloud import broker
        private = workdir / "broker"
        os.environ["PCLOUD_BROKER_URL"] = broker.start(
            private, port=broker.free_port(), dist_port=broker.free_port(),
            epmd_port=broker.free_port())
        os.environ["PCLOUD_BROKER_ADMIN"] = str(private)   # the DPE mints agent logins
    url = os.environ["PCLOUD_BROKER_URL"]
    bus = Bus(url=url, name=name).start()
    try:
        yield url, bus
    finally:
        bus.close()
        if private is not None:
            from pcloud import broker
            broker.stop(private)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--drivers", default="process,qemu,libvirt")
    args = parser.parse_args()
    drivers = args.drivers.split(",")
    workdir = Path(tempfile.mkdtemp(prefix="pcloud-death-"))
    with bench_bus(workdir, "bench-death") as (url, bus):
        try:
            compare(drivers, args.kills, workdir, url, bus)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


def compare(drivers: list[str], kills: int, workdir: Path, url: str, bus: Bus) -> None:
    print(f"heartbeats {HB_INTERVAL:g} s x {HB_MISSES}: a loss alone is known after "
          f"{HB_INTERVAL * HB_MISSES * 1000:.0f} ms; target: restart begun <= 100 ms")
    if "process" in drivers:
        run("process", "process", ProcessDriver(), kill_process, workdir, url, bus, kills)
        run("process-heartbeats (peer)", "process", Quiet(), kill_process, workdir, url,
            bus, max(3, kills // 3))
    if "qemu" in drivers and shutil.which("qemu-system-x86_64"):
        from dpe_agent.drivers.qemu import QemuDriver
        image = placeholder_image(workdir / "vm")
        run("qemu", "qemu", QemuDriver(), kill_qemu, workdir, url, bus, kills,
            image=str(image), boot_event="starting", per_dpe=3)
    if "libvirt" in drivers:
        import libvirt

        from dpe_agent.drivers.libvirt import LibvirtDriver, domain_name
        image = workdir / "vm" if (workdir / "vm").exists() else placeholder_image(
            workdir / "vm")
        outside = libvirt.open("test:///default")
        run("libvirt (test:///default)", "libvirt", LibvirtDriver(uri="test:///default"),
            lambda spec: outside.lookupByName(domain_name(spec)).destroy(), workdir, url,
            bus, kills, image=str(image), boot_event="starting", per_dpe=3)


if __name__ == "__main__":
    sys.exit(main())
