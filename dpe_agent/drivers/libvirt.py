"""The libvirt infrastructure driver: each assembly is a libvirt domain booted from its image.

Domains are persistent, named ``pcloud-<deployable>-<assembly>``, software-emulated
(``type='qemu'``, TCG) and boot the JEOS kernel directly. libvirt's own ``<interface
type='user'>`` cannot express ``restrict=on`` or ``guestfwd``, so the VM's only network card is
passed to QEMU verbatim through ``<qemu:commandline>`` (see ``vmboot``): the guest reaches the
broker and nothing else. The host reaches the guest through the QEMU guest agent's
virtio-serial channel (commands run with ``virsh qemu-agent-command``, e.g. ``guest-exec``).
The libvirt-python bindings are imported only when a driver is made.

A domain that stops without this driver stopping it (virt-manager's Force Off, ``virsh
destroy``, a QEMU crash, the guest powering off) is reported at once (``watch_deaths``) from
libvirt's domain lifecycle events, which libvirt delivers through an event loop thread
(``virEventRegisterDefaultImpl``, one per process).
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid as uuidlib
import xml.etree.ElementTree as ET
from pathlib import Path
from types import ModuleType
from typing import Any

from dpe_agent.drivers.base import AssemblySpec, DeathReport, DriverError, PowerState
from dpe_agent.drivers.vmboot import (
    BOOT_TIMEOUT,
    CONSOLE_LOG,
    VmImage,
    boot_disk,
    console_progress,
    credentials_option,
    kernel_cmdline,
    last_log_line,
    load_vm_image,
    netdev_option,
    nic_option,
)
from pcloud.acl import allow_search_to

DEFAULT_URI = "qemu:///system"
URI_VAR = "PCLOUD_LIBVIRT_URI"      # the URI when neither the caller nor the spec names one
QEMU_USER = "libvirt-qemu"   # whom qemu:///system runs QEMU as (Debian)
QEMU_NS = "http://libvirt.org/schemas/domain/qemu/1.0"
POLL_INTERVAL = 0.2
KEEPALIVE = (5, 3)           # seconds between libvirt keepalive probes, probes missed
#: the virtio-serial port of the QEMU guest agent (qemu-guest-agent, in every JEOS): what
#: ``virsh qemu-agent-command`` and ``pcloud.libvirtd.guest_exec`` talk to
GUEST_AGENT_CHANNEL = "org.qemu.guest_agent.0"

log = logging.getLogger(__name__)
_event_loop_lock = threading.Lock()
_event_loop: threading.Thread | None = None


def _start_event_loop(libvirt: ModuleType) -> None:
    """Run libvirt's default event loop on a thread, once per process: lifecycle events and
    keepalives of every connection opened afterwards are dispatched there."""
    global _event_loop
    with _event_loop_lock:
        if _event_loop is not None:
            return
        libvirt.virEventRegisterDefaultImpl()

        def run() -> None:
            while True:
                if libvirt.virEventRunDefaultImpl() < 0:
                    time.sleep(0.1)

        _event_loop = threading.Thread(target=run, name="libvirt-events", daemon=True)
        _event_loop.start()


def stop_reason(libvirt: ModuleType, detail: int) -> str:
    """Words for a STOPPED lifecycle event's detail."""
    return {libvirt.VIR_DOMAIN_EVENT_STOPPED_DESTROYED: "destroyed (forced off)",
            libvirt.VIR_DOMAIN_EVENT_STOPPED_SHUTDOWN: "shut down from inside the guest",
            libvirt.VIR_DOMAIN_EVENT_STOPPED_CRASHED: "crashed",
            libvirt.VIR_DOMAIN_EVENT_STOPPED_FAILED: "failed (QEMU ended)",
            }.get(detail, f"stopped (lifecycle detail {detail})")


def import_libvirt() -> ModuleType:
    """Import libvirt-python, or say what to install."""
    try:
        import libvirt
    except ImportError as exc:
        raise DriverError("the libvirt driver needs libvirt-python: pip install libvirt-python "
                          "(building it needs the Debian packages libvirt-dev and pkg-config)"
                          ) from exc
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    return libvirt


def domain_name(spec: AssemblySpec) -> str:
    """The libvirt domain name of an assembly."""
    return f"pcloud-{spec.deployable}-{spec.name}"


def _valid_uuid(text: str) -> str | None:
    try:
        return str(uuidlib.UUID(text))
    except ValueError:
        return None


def _sub(parent: ET.Element, tag: str, text: str | None = None, **attrs: str) -> ET.Element:
    element = ET.SubElement(parent, tag, attrs)
    if text is not None:
        element.text = text
    return element


def domain_xml(spec: AssemblySpec, image: VmImage | None = None) -> str:
    """The domain definition of an assembly: TCG, direct kernel boot, virtio disk, one NIC."""
    image = image or load_vm_image(spec)
    ET.register_namespace("qemu", QEMU_NS)
    domain = ET.Element("domain", {"type": "qemu"})
    _sub(domain, "name", domain_name(spec))
    if uuid := _valid_uuid(spec.uuid):
        _sub(domain, "uuid", uuid)
    _sub(domain, "description", f"pcloud assembly {spec.name} of deployable {spec.deployable}")
    _sub(domain, "memory", str(image.memory_mib), unit="MiB")
    _sub(domain, "vcpu", str(image.vcpus))
    os_el = _sub(domain, "os")
    _sub(os_el, "type", "hvm", arch="x86_64", machine="pc")
    _sub(os_el, "kernel", str(image.kernel))
    _sub(os_el, "initrd", str(image.initrd))
    _sub(os_el, "cmdline", kernel_cmdline(spec))
    _sub(_sub(domain, "features"), "acpi")
    _sub(domain, "on_poweroff", "destroy")
    _sub(domain, "on_reboot", "restart")
    _sub(domain, "on_crash", "destroy")
    devices = _sub(domain, "devices")
    disk = _sub(devices, "disk", type="file", device="disk")
    _sub(disk, "driver", name="qemu", type="qcow2")
    _sub(disk, "source", file=str(image.disk))
    _sub(disk, "target", dev="vda", bus="virtio")
    serial = _sub(devices, "serial", type="file")       # the boot log, as with the qemu driver
    _sub(serial, "source", path=str(Path(spec.state_dir).resolve() / CONSOLE_LOG))
    _sub(serial, "target", port="0")
    channel = _sub(devices, "channel", type="unix")     # the host's way in: the guest agent
    _sub(channel, "target", type="virtio", name=GUEST_AGENT_CHANNEL)
    _sub(devices, "controller", type="usb", model="none")      # as the qemu driver's
    _sub(devices, "memballoon", model="none")                  # -nodefaults: nothing to emulate
    commandline = _sub(domain, f"{{{QEMU_NS}}}commandline")
    for arg in ("-netdev", netdev_option(image, spec.broker_url),
                "-device", nic_option(image),
                "-fw_cfg", credentials_option(spec, owner=QEMU_USER)):
        _sub(commandline, f"{{{QEMU_NS}}}arg", value=arg)
    return ET.tostring(domain, encoding="unicode")


class LibvirtDriver:
    """Runs assemblies as libvirt domains on the URI of ``extra["libvirt_uri"]`` or a default."""

    name = "libvirt"
    boot_timeout = BOOT_TIMEOUT

    def __init__(self, uri: str | None = None, log_dir: str | None = None) -> None:
        self._libvirt = import_libvirt()
        self._default_uri = uri or os.environ.get(URI_VAR) or DEFAULT_URI
        #: where libvirtd writes each domain's QEMU log (<name>.log), quoted when one dies
        self._log_dir = log_dir or "/var/log/libvirt/qemu"
        self._conns: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._report: DeathReport | None = None
        self._watched: dict[str, str] = {}        # domain name -> assembly, while we run it
        self._watch_lock = threading.Lock()       # not _lock: held by the event loop thread

    def watch_deaths(self, report: DeathReport) -> None:
        """Report domains that stop on their own, from libvirt's lifecycle events."""
        _start_event_loop(self._libvirt)
        self._report = report
        self.close()            # connections opened before the event loop get no events

    def _watch(self, spec: AssemblySpec) -> None:
        with self._watch_lock:
            self._watched[domain_name(spec)] = spec.name

    def _unwatch(self, spec: AssemblySpec) -> None:
        with self._watch_lock:
            self._watched.pop(domain_name(spec), None)

    def _lifecycle(self, _conn: Any, dom: Any, event: int, detail: int, _opaque: Any) -> None:
        """Event loop thread: a watched domain stopped, and not by us."""
        if event != self._libvirt.VIR_DOMAIN_EVENT_STOPPED:
            return
        name = dom.name()
        try:
            if dom.isActive():
                return         # a late event of an earlier run (e.g. our fence): it runs again
        except self._libvirt.libvirtError:
            pass
        with self._watch_lock:
            assembly = self._watched.pop(name, None)
        report = self._report
        if assembly is None or report is None:
            return
        reason = f"domain {name} {stop_reason(self._libvirt, detail)}"
        if detail == self._libvirt.VIR_DOMAIN_EVENT_STOPPED_FAILED:
            last = last_log_line(os.path.join(self._log_dir, f"{name}.log"))
            if last:
                reason += f": {last}"
        report(assembly, reason)

    def _uri(self, spec: AssemblySpec) -> str:
        return spec.extra.get("libvirt_uri") or self._default_uri

    def _conn(self, spec: AssemblySpec) -> Any:
        uri = self._uri(spec)
        with self._lock:
            conn = self._conns.get(uri)
            if conn is not None and conn.isAlive():
                return conn
            try:
                conn = self._libvirt.open(uri)
                if self._report is not None:
                    conn.domainEventRegisterAny(
                        None, self._libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, self._lifecycle, None)
                    if not uri.startswith("test:"):
                        conn.setKeepAlive(*KEEPALIVE)
            except self._libvirt.libvirtError as exc:
                raise DriverError(f"cannot connect to libvirt at {uri}: {exc}") from exc
            self._conns[uri] = conn
            return conn

    def _lookup(self, spec: AssemblySpec) -> Any | None:
        try:
            return self._conn(spec).lookupByName(domain_name(spec))
        except self._libvirt.libvirtError as exc:
            if exc.get_error_code() == self._libvirt.VIR_ERR_NO_DOMAIN:
                return None
            raise DriverError(f"libvirt lookup of {domain_name(spec)} failed: {exc}") from exc

    def _call(self, what: str, spec: AssemblySpec, func: Any, *args: Any) -> Any:
        try:
            return func(*args)
        except self._libvirt.libvirtError as exc:
            raise DriverError(f"libvirt {what} of {domain_name(spec)} failed: {exc}") from exc

    def define(self, spec: AssemblySpec, image: VmImage | None = None) -> Any:
        """Define (or redefine, when powered off) the assembly's domain; returns it."""
        xml = domain_xml(spec, image)
        existing = self._lookup(spec)
        if existing is not None and not existing.isActive():
            stored_uuid = existing.UUIDString()
            if _valid_uuid(spec.uuid) not in (None, stored_uuid):
                self._call("undefine", spec, existing.undefine)
        return self._call("define", spec, self._conn(spec).defineXML, xml)

    def start(self, assembly: AssemblySpec) -> None:
        """Boot the domain; a domain already running is left alone."""
        dom = self._lookup(assembly)
        if dom is not None and dom.isActive():
            self._watch(assembly)
            return
        image = load_vm_image(assembly)
        booted = boot_disk(assembly, image)
        dom = self.define(assembly, booted)
        self._let_qemu_in(assembly, [image.disk, image.kernel, image.initrd, booted.disk,
                                     Path(assembly.state_dir) / CONSOLE_LOG])
        self._watch(assembly)
        try:
            self._call("start", assembly, dom.create)
        except DriverError:
            self._unwatch(assembly)
            raise

    def boot_progress(self, spec: AssemblySpec) -> int | None:
        return console_progress(spec)

    def _qemu_uid(self, spec: AssemblySpec) -> int | None:
        """Whom this libvirtd runs QEMU as (its DAC base label), None if it does not say."""
        try:
            caps = ET.fromstring(self._conn(spec).getCapabilities())
        except (self._libvirt.libvirtError, ET.ParseError):
            return None
        for model in caps.iter("secmodel"):
            if model.findtext("model") == "dac":
                for label in model.iter("baselabel"):
                    if label.get("type") == "qemu" and label.text:
                        uid = label.text.split(":")[0].lstrip("+")
                        return int(uid) if uid.isdigit() else None
        return None

    def _let_qemu_in(self, spec: AssemblySpec, files: list[Path]) -> None:
        """An unprivileged QEMU (``libvirt-qemu`` under the host's ``qemu:///system``) must
        reach the boot files in 0700 folders: search permission for it alone, on each folder
        on their way (libvirt relabels the files, never their folders). Done at each boot,
        after which pcloud's own chmods may take it back: QEMU has what it needs open."""
        uid = self._qemu_uid(spec)
        if not uid:
            return                          # root, or a driver with no DAC label: nothing
        for path in files:
            try:
                changed = allow_search_to(path, uid)
            except OSError as exc:
                raise DriverError(f"QEMU (uid {uid}) cannot reach {path}: {exc}") from exc
            if changed:
                log.info("QEMU (uid %d) may pass through %s", uid,
                         ", ".join(str(p) for p in changed))

    def stop(self, assembly: AssemblySpec, timeout: float) -> None:
        """ACPI shutdown, then destroy if the guest is still running after ``timeout``."""
        self._unwatch(assembly)
        dom = self._lookup(assembly)
        if dom is None or not dom.isActive():
            return
        self._call("shutdown", assembly, dom.shutdown)
        deadline = time.monotonic() + timeout
        while dom.isActive() and time.monotonic() < deadline:
            time.sleep(POLL_INTERVAL)
        if dom.isActive():
            self.fence(assembly)

    def fence(self, assembly: AssemblySpec) -> None:
        """Destroy (power off) the domain at once; nothing to do if it is not running."""
        self._unwatch(assembly)
        dom = self._lookup(assembly)
        if dom is None:
            return
        try:
            dom.destroy()
        except self._libvirt.libvirtError as exc:
            if dom.isActive():
                raise DriverError(f"libvirt destroy of {domain_name(assembly)} failed: {exc}"
                                  ) from exc

    def status(self, assembly: AssemblySpec) -> PowerState:
        """RUNNING or STOPPED (also when not defined); UNKNOWN when libvirt cannot be asked."""
        try:
            dom = self._lookup(assembly)
            if dom is None:
                return PowerState.STOPPED
            if not dom.isActive():
                return PowerState.STOPPED
        except (DriverError, self._libvirt.libvirtError):
            return PowerState.UNKNOWN
        self._watch(assembly)        # found running (e.g. by a restarted DPE): watched
        return PowerState.RUNNING

    def undefine(self, assembly: AssemblySpec) -> None:
        """Power the domain off and remove its definition (the image stays)."""
        dom = self._lookup(assembly)
        if dom is None:
            return
        self.fence(assembly)
        self._call("undefine", assembly, dom.undefine)

    def close(self) -> None:
        """Close the libvirt connections."""
        with self._lock:
            for conn in self._conns.values():
                try:
                    conn.close()
                except self._libvirt.libvirtError:
                    continue
            self._conns.clear()

