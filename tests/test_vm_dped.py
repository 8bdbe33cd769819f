"""VM assemblies through a real ``dped``: infrastructure selection, boot timeout, fencing.

The slow test builds an assembly image from the cached JEOS *without* naming a deployable,
runs a deployable with one ``qemu`` assembly under a ``dped`` subprocess on the session's
private broker, waits until its ``process`` resource runs, SIGKILLs the VM's QEMU and waits
for the DPE to learn it from the driver (QEMU's exit, not missed heartbeats), fence, boot the
VM again and restart the resource. It prints the times (boot to heartbeat, kill to
detection / fence / running).
Whatever happens, no QEMU of the test is left running.

The fast tests check the choice of driver in ``dped``: ``openstack`` is a ``config_error``
and a ``failed`` deployable (the DPE keeps answering), and a VM driver's boot timeout is the
one the DPE waits for the first heartbeat.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from support.events import Events
from support.vm import BOOT_TIMEOUT, CACHE, Heartbeats, console_tail, missing
from support.waiting import wait_until

from dpe_agent.daemon import Dpe, run_in_thread
from dpe_agent.drivers import UnavailableDriver
from dpe_agent.drivers.process import ProcessDriver
from dpe_agent.drivers.qemu import PIDFILE, QemuDriver
from pcloud.bus import Bus
from pcloud.deployable import Deployable
from pcloudsh import images


def document(name: str, infrastructure: str, image: str | None) -> str:
    image_attr = f' image="{image}"' if image else ""
    return (f'<deployable name="{name}" infrastructure="{infrastructure}"><assemblies>'
            f'<assembly name="web"{image_attr} heartbeat_interval="1" heartbeat_misses="3">'
            '<services><service name="sleeper" class="process" monitor_interval="2">'
            '<parameters><parameter name="command" value="sleep infinity"/></parameters>'
            '</service></services></assembly></assemblies></deployable>')


def start_dped(doc: Path, state: Path, url: str) -> subprocess.Popen[bytes]:
    log = open(state / "dped.log", "ab")
    return subprocess.Popen([str(Path(sys.executable).with_name("dped")), "--deployable",
                             str(doc), "--state-dir", str(state), "--foreground"],
                            stdout=log, stderr=log, env=dict(os.environ, PCLOUD_BROKER_URL=url))


def qemus_of(marker: Path) -> list[int]:
    """QEMU processes whose command line names ``marker`` (the test's state dir)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
                if b"qemu-system" in argv[0] and any(os.fsencode(str(marker)) in a
                                                      for a in argv):
                    found.append(int(entry))
    return found


def stop_dped(bus: Bus, name: str, proc: subprocess.Popen[bytes], state: Path) -> None:
    """``deployable_stop`` (ACPI power-off of the VM), then make sure nothing is left."""
    try:
        if proc.poll() is None:
            bus.call(f"pcloud.dpe.{name}", "deployable_stop", f'<deployable name="{name}"/>',
                     timeout=15.0)
            proc.wait(120)
    except Exception as exc:
        print(f"clean stop failed ({exc}): killing dped and its VMs")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        for pid in qemus_of(state):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        wait_until(lambda: not qemus_of(state), 10, "QEMU processes to be gone")


def test_openstack_is_a_config_error_and_the_dpe_keeps_answering(broker, bus, tmp_path):
    name = f"os{uuid.uuid4().hex[:8]}"
    doc = tmp_path / f"{name}.xml"
    doc.write_text(document(name, "openstack", "some-image"))
    events = Events(bus, name)
    proc = start_dped(doc, tmp_path, broker.url)
    try:
        error = events.wait(30, type="config_error")
        assert "not available in this build" in error.reason
        failed = events.wait(30, type="deployable_state_change", state="failed")
        assert "openstack" in failed.reason
        status = bus.call(f"pcloud.dpe.{name}", "deployable_status",
                          f'<deployable name="{name}"/>', timeout=10.0)
        assert status.get("state") == "failed"
        assert proc.poll() is None, "dped exited instead of reporting the problem"
    finally:
        stop_dped(bus, name, proc, tmp_path)
        events.close()
    assert proc.returncode == 0


def test_the_dpe_waits_a_vm_drivers_boot_timeout(broker, tmp_path):
    """A qemu assembly gets the driver's 300 s for its first beat, a process sandbox 30 s."""
    assert QemuDriver.boot_timeout == 300 and ProcessDriver.boot_timeout == 30
    name = f"bt{uuid.uuid4().hex[:8]}"
    dep = Deployable.from_xml(document(name, "qemu", str(tmp_path / "no-such-image")))
    dpe = Dpe(dep, tmp_path, broker_url=broker.url)
    assert isinstance(dpe.driver, QemuDriver) and not isinstance(dpe.driver, UnavailableDriver)
    thread = run_in_thread(dpe)
    try:
        watch = wait_until(lambda: dpe.tracker.watches.get("web"), 30, "the boot watch")
        assert watch.boot_timeout == QemuDriver.boot_timeout
    finally:
        dpe.queue.put(("signal", signal.SIGTERM))
        thread.join(30)


@pytest.mark.slow
def test_vm_assembly_under_dped_is_fenced_and_rebooted_after_qemu_is_killed(broker, bus,
                                                                           tmp_path):
    reason = missing()
    if reason:
        pytest.skip(reason)
    catalogue = tmp_path / "catalogue"
    jeos = images.jeos_ensure("debian-12", "x86_64", CACHE / "catalogue",
                              progress=lambda line: print(line, flush=True), replace_stale=True)
    (catalogue / "jeos").mkdir(parents=True)
    (catalogue / "jeos" / jeos.name).symlink_to(jeos.path)
    built = time.monotonic()
    image = images.assembly_create("tmpl", jeos.name, catalogue, broker_url=broker.url)
    print(f"assembly_create (no deployable named): {time.monotonic() - built:.1f} s")

    name = f"vmd{uuid.uuid4().hex[:8]}"
    state = tmp_path / "state"
    state.mkdir()
    doc = tmp_path / f"{name}.xml"
    doc.write_text(document(name, "qemu", str(image.path)))
    asm_dir = state / "dpe" / name / "assemblies" / "web"
    events = Events(bus, name)
    beats = Heartbeats()
    beat_sub = bus.subscribe(f"pcloud.heartbeat.{name}.web", beats)
    proc = start_dped(doc, state, broker.url)
    try:
        try:
            t_boot = events.arrival(events.wait(60, type="assembly_state_change",
                                                assembly="web", state="starting"))
            t_beat = events.arrival(events.wait(BOOT_TIMEOUT, type="assembly_state_change",
                                                assembly="web", state="running"))
            t_run = events.arrival(events.wait(60, type="resource_state_change",
                                               resource="sleeper", state="running"))
        except AssertionError as exc:
            pytest.fail(f"{exc}\nconsole:\n{console_tail(asm_dir)}")
        # Steady state first: a few beats more, so no operation is in flight to the agent.
        since = t_run
        for _ in range(3):
            since, beat = beats.first_after(since, 30)
        # The image was built as "tmpl" of no deployable: its names came from the kernel.
        assert (beat.get("deployable"), beat.get("assembly")) == (name, "web")
        assert beat.get("uuid") != image.meta["uuid"]
        first_pid = int((asm_dir / PIDFILE).read_text())
        last_seq = events.last_seq()

        killed = time.monotonic()
        os.kill(first_pid, signal.SIGKILL)
        try:
            lost = events.wait(30, after=last_seq, type="assembly_state_change",
                               assembly="web", state="failed")
            t_fence = events.arrival(events.wait(60, after=last_seq, type="fencing",
                                                 assembly="web"))
            t_beat2 = events.arrival(events.wait(BOOT_TIMEOUT, after=last_seq,
                                                 type="assembly_state_change", assembly="web",
                                                 state="running"))
            back = events.wait(60, after=last_seq, type="resource_state_change",
                               resource="sleeper", state="running")
            t_lost, t_run2 = events.arrival(lost), events.arrival(back)
        except AssertionError as exc:
            pytest.fail(f"{exc}\nconsole:\n{console_tail(asm_dir)}")
        # known from QEMU's exit at once, not from the heartbeats 3 s later
        assert "reported by the qemu driver" in lost.reason, lost.reason
        second_pid = int((asm_dir / PIDFILE).read_text())
        assert second_pid != first_pid and qemus_of(state) == [second_pid]
        print(f"boot to first heartbeat: {t_beat - t_boot:.1f} s; "
              f"to resource running: {t_run - t_boot:.1f} s")
        print(f"after SIGKILL of QEMU: lost {t_lost - killed:.1f} s, fenced "
              f"{t_fence - killed:.1f} s, heartbeat again {t_beat2 - killed:.1f} s "
              f"(boot {t_beat2 - t_fence:.1f} s), resource running {t_run2 - killed:.1f} s "
              f"(incident {back.extra.get('duration_ms')} ms)")
    finally:
        stop_dped(bus, name, proc, state)
        events.close()
        beat_sub.cancel()
    assert not qemus_of(state)
