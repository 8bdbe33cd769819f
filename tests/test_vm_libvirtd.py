"""The libvirt driver against a real libvirtd: real domains of a real assembly image under TCG.

A private libvirtd (pcloud/libvirtd.py) runs for the module, with libvirt's default seccomp
sandbox for QEMU. One assembly image from the cached JEOS; its domain is defined and booted
(its agent heartbeats through the broker forward: no PCI slot clash, no helper process for
seccomp to kill), found running by a second driver (a restarted DPE), shut down by it through
ACPI, started again and forced off with ``virsh destroy`` as an operator would (both reported
at once by the first driver's lifecycle events, neither by the one that stopped it), started
and fenced with destroy (not reported), and undefined. One full boot: TCG boots are slow.
"""

from __future__ import annotations

import os
import shlex
import time
import uuid
from contextlib import closing
from urllib.parse import urlsplit
from xml.sax.saxutils import quoteattr

import pytest
from support.dpe import dpe_running
from support.events import Events, Heartbeats
from support.vm import CACHE, missing
from support.waiting import wait_until

from dpe_agent.drivers.base import AssemblySpec, PowerState
from pcloud import broker as private_broker
from pcloud.broker_admin import admin_for
from pcloud.credentials import LocalIssuer
from pcloud.libvirtd import PrivateLibvirtd, libvirt_missing
from pcloudsh import images

pytestmark = pytest.mark.slow

BOOT_TIMEOUT = float(os.environ.get("PCLOUD_TEST_BOOT_TIMEOUT", "300"))


@pytest.fixture(scope="module")
def libvirtd(tmp_path_factory):
    reason = missing() or libvirt_missing()
    if reason:
        pytest.skip(reason)
    pytest.importorskip("libvirt", reason="libvirt-python missing (scripts/setup-host --tests)")
    daemon = PrivateLibvirtd(tmp_path_factory.mktemp("libvirtd"))
    daemon.start()
    yield daemon
    daemon.stop()


def domain_log(name: str) -> str:
    path = f"/var/log/libvirt/qemu/{name}.log"
    return open(path, errors="replace").read()[-3000:] if os.path.exists(path) else "(no log)"


def test_real_domain_boot_adopt_acpi_force_off_fence_undefine(libvirtd, bus, broker_url,
                                                               tmp_path):
    from dpe_agent.drivers.libvirt import LibvirtDriver, domain_name

    catalogue = tmp_path / "catalogue"
    jeos = images.jeos_ensure("debian-12", "x86_64", CACHE / "catalogue",
                              progress=lambda line: print(line, flush=True), replace_stale=True)
    (catalogue / "jeos").mkdir(parents=True)
    (catalogue / "jeos" / jeos.name).symlink_to(jeos.path)
    dep = f"lv{uuid.uuid4().hex[:8]}"
    asm = images.assembly_create("web", jeos.name, catalogue, deployable=dep,
                                 broker_url=broker_url, heartbeat_interval=1.0)
    beats = Heartbeats()
    sub = bus.subscribe(f"pcloud.heartbeat.{dep}.web", beats)
    login = LocalIssuer(admin_for(os.environ["PCLOUD_BROKER_ADMIN"]), dep).issue(["web"])["web"]
    spec = AssemblySpec(deployable=dep, name="web", uuid=asm.meta["uuid"],
                        broker_url=broker_url, state_dir=tmp_path / "state",
                        image=str(asm.path), credentials=login)
    name = domain_name(spec)
    deaths: list[tuple[str, str]] = []
    driver = LibvirtDriver(uri=libvirtd.uri)
    driver.watch_deaths(lambda a, reason: deaths.append((a, reason)))
    adopter = LibvirtDriver(uri=libvirtd.uri)
    adopted: list[tuple[str, str]] = []

    def boot(label: str) -> None:
        booted = time.monotonic()
        driver.start(spec)
        assert driver.status(spec) is PowerState.RUNNING
        try:
            when, beat = beats.first_after(booted, BOOT_TIMEOUT)
        except AssertionError:
            pytest.fail(f"no heartbeat after the {label}; libvirt's log:\n{domain_log(name)}")
        assert beat.get("uuid") == asm.meta["uuid"]
        print(f"{label}: first heartbeat {when - booted:.1f} s after start")

    try:
        boot("boot")                                   # one full boot: TCG boots are slow
        adopter.watch_deaths(lambda a, reason: adopted.append((a, reason)))
        assert adopter.status(spec) is PowerState.RUNNING          # a restarted DPE's view
        stopping = time.monotonic()
        adopter.stop(spec, timeout=120)                            # ACPI, destroy after 120 s
        assert adopter.status(spec) is PowerState.STOPPED
        print(f"ACPI shutdown: {time.monotonic() - stopping:.1f} s")
        wait_until(lambda: deaths, timeout=30)
        # the guest powered off (not destroyed), as the driver that did not ask for it saw it
        assert deaths == [("web", f"domain {name} shut down from inside the guest")], deaths
        assert not adopted, adopted                    # its own stop is no death

        driver.start(spec)
        forced = time.monotonic()
        assert libvirtd.virsh("destroy", name).returncode == 0      # virt-manager's Force Off
        wait_until(lambda: len(deaths) == 2, timeout=30)
        print(f"Force Off reported after {time.monotonic() - forced:.3f} s")
        assert deaths[1] == ("web", f"domain {name} destroyed (forced off)")
        assert driver.status(spec) is PowerState.STOPPED
        assert name in libvirtd.virsh("list", "--all", "--name").stdout.split()   # persistent

        driver.start(spec)
        driver.fence(spec)                                          # destroy, at once
        assert driver.status(spec) is PowerState.STOPPED
        driver.undefine(spec)
        assert name not in libvirtd.virsh("list", "--all", "--name").stdout.split()
        assert len(deaths) == 2, deaths                # our own fence is no death
    finally:
        driver.undefine(spec)
        driver.close()
        adopter.close()
        sub.cancel()


def test_an_amqps_guest_verifies_the_broker_with_what_its_boot_handed_over(
        libvirtd, broker, bus, tmp_path, monkeypatch):
    """An assembly made for the broker's amqps URL: its image holds neither secret nor CA; the
    boot hands over the login, the CA the DPE trusts and the broker's name through fw_cfg,
    and the agent, dialling the forward address, verifies the certificate against that name
    (verification is never off in a guest). Its heartbeats arriving prove the session."""
    from dpe_agent.drivers.libvirt import LibvirtDriver

    settings = private_broker.load_settings(broker.require_control())
    assert urlsplit(settings.tls_url).hostname == "localhost"
    monkeypatch.setenv("PCLOUD_TLS_CA", settings.tls_ca)        # what the DPE trusts
    catalogue = tmp_path / "catalogue"
    jeos = images.jeos_ensure("debian-12", "x86_64", CACHE / "catalogue", replace_stale=True)
    (catalogue / "jeos").mkdir(parents=True)
    (catalogue / "jeos" / jeos.name).symlink_to(jeos.path)
    dep = f"lt{uuid.uuid4().hex[:8]}"
    asm = images.assembly_create("tls", jeos.name, catalogue, deployable=dep,
                                 broker_url=settings.tls_url, heartbeat_interval=1.0)
    assert asm.meta["guest_broker_url"].startswith("amqps://10.0.2.100:"), asm.meta
    beats = Heartbeats()
    sub = bus.subscribe(f"pcloud.heartbeat.{dep}.tls", beats)
    login = LocalIssuer(admin_for(os.environ["PCLOUD_BROKER_ADMIN"]), dep).issue(["tls"])["tls"]
    spec = AssemblySpec(deployable=dep, name="tls", uuid=asm.meta["uuid"],
                        broker_url=settings.tls_url, state_dir=tmp_path / "state",
                        image=str(asm.path), credentials=login)
    driver = LibvirtDriver(uri=libvirtd.uri)
    try:
        booted = time.monotonic()
        driver.start(spec)
        try:
            when, beat = beats.first_after(booted, BOOT_TIMEOUT)
        except AssertionError:
            pytest.fail("no heartbeat over amqps; the guest's console:\n"
                        + (tmp_path / "state" / "console.log").read_text(errors="replace")[-3000:])
        assert beat.get("uuid") == asm.meta["uuid"]
        print(f"amqps boot: first heartbeat {when - booted:.1f} s after start")
    finally:
        driver.undefine(spec)
        driver.close()
        sub.cancel()


def isolation_probe(broker_url: str) -> str:
    """A process resource that runs only if nothing but the forward is reachable from the
    guest: the host at 10.0.2.2 (its broker port, ssh) and an outside address must not be."""
    port = urlsplit(broker_url).port
    probe = ("import socket,sys\n"
             f"targets=[('10.0.2.2',{port}),('10.0.2.2',22),('1.1.1.1',80)]\n"
             "def reach(a):\n"
             " s=socket.socket();s.settimeout(3)\n"
             " return s.connect_ex(a)==0\n"
             "sys.exit(any(reach(a) for a in targets))")
    command = f"python3 -c {shlex.quote(probe)} && exec sleep infinity"
    return (f'<service name="isolated" class="process" monitor_interval="5"><parameters>'
            f'<parameter name="command" value={quoteattr(command)}/>'
            f'<parameter name="shell" value="true"/></parameters></service>')


def test_dpe_restarts_a_forced_off_domain_at_once(libvirtd, bus, broker_url, tmp_path):
    """The original acceptance test's Force Off, through a DPE on the real libvirtd (the
    guest first proven isolated from inside): ``virsh destroy`` of the running domain; the
    DPE learns it from libvirt (not heartbeats later), fences, boots the domain again, and
    the resource runs in it again."""
    from dpe_agent.daemon import Dpe
    from dpe_agent.drivers.libvirt import LibvirtDriver, domain_name
    from pcloud.deployable import Deployable

    catalogue = tmp_path / "catalogue"
    jeos = images.jeos_ensure("debian-12", "x86_64", CACHE / "catalogue", replace_stale=True)
    (catalogue / "jeos").mkdir(parents=True)
    (catalogue / "jeos" / jeos.name).symlink_to(jeos.path)
    image = images.assembly_create("tmpl", jeos.name, catalogue, broker_url=broker_url)
    name = f"lvd{uuid.uuid4().hex[:8]}"
    xml = (f'<deployable name="{name}" infrastructure="libvirt"><assemblies>'
           f'<assembly name="web" image="{image.path}" heartbeat_interval="1" '
           f'heartbeat_misses="3"><services><service name="sleeper" class="process" '
           f'monitor_interval="5"><parameters><parameter name="command" '
           f'value="sleep infinity"/></parameters></service>{isolation_probe(broker_url)}'
           f'</services></assembly></assemblies></deployable>')
    dpe = Dpe(Deployable.from_xml(xml), tmp_path / "state", broker_url=broker_url,
              driver=LibvirtDriver(uri=libvirtd.uri))
    spec = AssemblySpec(name, "web", "u", broker_url, tmp_path / "state")
    with closing(Events(bus, name)) as events, dpe_running(dpe, bus, timeout=180):
        try:
            events.wait(BOOT_TIMEOUT, type="resource_state_change", resource="sleeper",
                        state="running")
        except AssertionError:
            pytest.fail(f"not running; libvirt's log:\n{domain_log(domain_name(spec))}")
        # from inside the guest: the host (its broker port included) and the outside are
        # out of reach; the broker is reached only through the forward (the agent's beats)
        events.wait(60, type="resource_state_change", resource="isolated", state="running")
        assert not events.find(resource="isolated", state="failed"), events.snapshot()
        mark = events.last_seq()
        forced = time.time()
        assert libvirtd.virsh("destroy", domain_name(spec)).returncode == 0
        failed = events.wait(60, type="assembly_state_change", assembly="web", state="failed",
                             after=mark)
        assert "destroyed (forced off) (reported by the libvirt driver)" in failed.reason
        fenced = events.wait(60, type="fencing", assembly="web", after=mark)
        booting = events.wait(60, type="assembly_state_change", assembly="web",
                              state="starting", after=mark)
        back = events.wait(BOOT_TIMEOUT, type="resource_state_change", resource="sleeper",
                           state="running", after=mark)
        assert failed.seq < fenced.seq < booting.seq < back.seq
        print(f"Force Off -> failed {failed.time.timestamp() - forced:.3f} s, restart begun "
              f"{booting.time.timestamp() - forced:.3f} s, resource running "
              f"{back.time.timestamp() - forced:.1f} s")
        assert not dpe.violations, dpe.violations
