"""How an assembly image boots as a VM: the files it needs and its network, for every VM driver.

``pcloudsh.images`` writes an assembly as a folder holding ``disk.qcow2`` (an overlay on its
JEOS image) and ``assembly.json`` (kernel, initrd, MAC address, the broker port the guest agent
was configured with). The VMs boot the JEOS kernel directly and reach exactly one host service,
the broker: user-mode networking with ``restrict=on`` cuts the guest off from the host and the
outside, and one ``guestfwd`` rule turns connections to ``GUEST_BROKER_ADDR:port`` into a
``nc`` to the broker the DPE itself uses.

The assembly's login is not in the image either: every boot gets a fresh one as the QEMU
``fw_cfg`` item ``opt/pcloud/credentials`` (a 0600 file in the assembly's state dir, which
only that VM can read; ``guest_agent.config`` reads it with ``credentials = fw_cfg``).

The assembly's identity is not taken from the image: the kernel command line carries it
(``pcloud.deployable=… pcloud.assembly=… pcloud.uuid=… pcloud.heartbeat_interval=…``, read by
the guest agent, see ``guest_agent.config``; ``systemd.hostname=…`` for the host name), so an
image built for one deployable boots as whatever assembly the deployable document says.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import urlsplit

from dpe_agent.drivers.base import AssemblySpec, DriverError
from pcloud import config
from pcloud.config import tls_options
from pcloud.credentials import format_credentials
from pcloud.fsutil import private_dir, write_private
from pcloud.image_layout import ASSEMBLY_META, DISK_NAME, FW_CFG_NAME, GUEST_BROKER_ADDR
from pcloud.urls import mask_url

FW_CFG_FILE = "fw_cfg-credentials"
KERNEL_CMDLINE = "root=/dev/vda rw console=ttyS0"
DEFAULT_PORTS = {"amqp": 5672, "amqps": 5671}
# Seconds from start() to the agent's first heartbeat that a DPE should allow a VM driver:
# a TCG boot takes 40-45 s on a busy 2-core host, a process sandbox well under one.
BOOT_TIMEOUT = 300.0
#: the PCI slot of the VM's network card: libvirt hands out slots from 2 upwards (the disk
#: gets 2), and a card without an address took slot 2 first, so QEMU refused the disk
NIC_PCI_ADDR = "0x10"
#: seconds before QEMU connects its broker forward again after the broker closed it
FORWARD_RECONNECT = 1
#: this boot's disk: a copy-on-write overlay on the assembly image, in the assembly's state dir
BOOT_DISK = "boot.qcow2"
#: the guest's serial console, in the assembly's state dir
CONSOLE_LOG = "console.log"


@dataclass(frozen=True)
class VmImage:
    """The files and identity one assembly VM boots from."""

    disk: Path
    kernel: Path
    initrd: Path
    mac: str
    guest_broker_port: int
    memory_mib: int = 1024
    vcpus: int = 1


_CMDLINE_VALUE = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")


def credentials_option(spec: AssemblySpec, owner: str | None = None) -> str:
    """QEMU's ``-fw_cfg`` value handing this boot's agent login to the guest. The file is
    0600 (``owner``: the user QEMU runs as, when that is not us, e.g. libvirt-qemu)."""
    if spec.credentials is None:
        raise DriverError(f"no agent login for {spec.deployable}/{spec.name}")
    path = private_dir(Path(spec.state_dir)) / FW_CFG_FILE
    write_private(path, format_credentials(spec.credentials, **boot_tls(spec.broker_url)))
    if owner is not None:
        with contextlib.suppress(LookupError, OSError):
            shutil.chown(path, user=owner)
    return f"name={FW_CFG_NAME},file={path.resolve()}"


def boot_tls(broker_url: str) -> dict[str, str]:
    """What an ``amqps://`` guest needs to verify the broker, handed over with its login: the
    name the certificate carries (the host of the DPE's own URL: the guest dials the forward
    address) and the CA the DPE trusts (``tls_ca``, base64 PEM), if it names one."""
    if not broker_url.startswith("amqps://"):
        return {}
    extra = {"tls_server_name": broker_endpoint(broker_url)[0]}
    ca = tls_options().ca
    if ca:
        try:
            extra["tls_ca"] = base64.b64encode(Path(ca).read_bytes()).decode("ascii")
        except OSError as exc:
            raise DriverError(f"cannot read the broker CA {ca} for the guest: {exc}") from exc
    return extra


def kernel_cmdline(spec: AssemblySpec) -> str:
    """The VM's kernel command line: root disk, serial console, the assembly's identity."""
    identity = {"pcloud.deployable": spec.deployable, "pcloud.assembly": spec.name,
                "pcloud.uuid": spec.uuid,
                "pcloud.heartbeat_interval": f"{spec.heartbeat_interval:g}",
                "systemd.hostname": spec.name.replace("_", "-").strip("-").lower() or "assembly"}
    for key, value in identity.items():
        if not _CMDLINE_VALUE.match(value):
            raise DriverError(f"assembly {spec.deployable}/{spec.name}: {key} value {value!r} "
                              "cannot go on a kernel command line")
    return " ".join([KERNEL_CMDLINE, *(f"{k}={v}" for k, v in identity.items())])


def console_progress(spec: AssemblySpec) -> int | None:
    """A VM's ``boot_progress``: bytes the guest wrote to its serial console, which grow while
    it boots (kernel, systemd), not while it hangs. None: no console yet."""
    try:
        return (Path(spec.state_dir) / CONSOLE_LOG).stat().st_size
    except OSError:
        return None


def last_log_line(path: str | Path) -> str:
    """The last non-empty line of a VM's log: QEMU's own words on why it ended or would not
    start, for the event and ``deployable_status``."""
    try:
        with open(path, "rb") as log:
            log.seek(0, os.SEEK_END)
            log.seek(max(0, log.tell() - 4096))
            lines = log.read().decode(errors="replace").splitlines()
    except OSError:
        return ""
    return next((line.strip() for line in reversed(lines) if line.strip()), "")[:300]


def broker_endpoint(url: str) -> tuple[str, int]:
    """Return the (host, port) of a broker URL as the host sees it."""
    parts = urlsplit(url)
    if parts.scheme not in DEFAULT_PORTS or not parts.hostname:
        raise DriverError(f"broker URL {mask_url(url)!r} is not amqp://host[:port] or "
                          "amqps://host[:port]")
    return parts.hostname, parts.port or DEFAULT_PORTS[parts.scheme]


def _resolve_dir(image: str, catalogue_dir: str | None) -> Path:
    path = Path(image)
    if path.is_file():
        return path.parent
    if path.is_dir():
        return path
    if catalogue_dir and "/" not in image:
        candidate = Path(catalogue_dir) / "assemblies" / image
        if candidate.is_dir():
            return candidate
    raise DriverError(f"assembly image {image!r} not found (a path to an assembly folder or its "
                      f"disk, or an assembly name in the catalogue {catalogue_dir or '(none)'})")


def default_catalogue_dir() -> Path:
    """Where ``pcloudsh`` keeps the image catalogue (``Catalogue.images_dir``)."""
    return config.state_dir() / "pcloudsh" / "images"


def load_vm_image(spec: AssemblySpec) -> VmImage:
    """Find the assembly image of ``spec`` and read what booting it needs.

    ``spec.image`` is an assembly folder, its disk, or an assembly name looked up in
    ``spec.extra["catalogue_dir"]``, by default where pcloudsh keeps its images
    (``<state dir>/pcloudsh/images``).
    ``extra["memory_mib"]`` and ``extra["vcpus"]`` size the VM.
    """
    if not spec.image:
        raise DriverError(f"assembly {spec.deployable}/{spec.name} has no image")
    catalogue = spec.extra.get("catalogue_dir") or str(default_catalogue_dir())
    folder = _resolve_dir(spec.image, catalogue)
    try:
        meta = json.loads((folder / ASSEMBLY_META).read_text())
        disk = folder / meta.get("disk", DISK_NAME)
        image = VmImage(disk=disk, kernel=Path(meta["kernel"]), initrd=Path(meta["initrd"]),
                        mac=meta["mac"], guest_broker_port=int(meta["guest_broker_port"]),
                        memory_mib=int(spec.extra.get("memory_mib", 1024)),
                        vcpus=int(spec.extra.get("vcpus", 1)))
    except (OSError, ValueError, KeyError) as exc:
        raise DriverError(f"assembly image {folder} has no usable {ASSEMBLY_META}: {exc}") from exc
    for needed in (image.disk, image.kernel, image.initrd):
        if not needed.is_file():
            raise DriverError(f"assembly image {folder}: {needed} is missing")
    return image


def boot_disk(spec: AssemblySpec, image: VmImage) -> VmImage:
    """A fresh overlay on the image's disk for this boot, in the assembly's state dir.

    Every running assembly writes to a disk of its own, so many assemblies (and deployables)
    boot from one image at once, and each boot starts from the image as built, like a fenced
    process sandbox: nothing half-written by a forced-off guest is replayed.
    """
    overlay = private_dir(Path(spec.state_dir)) / BOOT_DISK
    overlay.unlink(missing_ok=True)
    try:
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2",
                        "-b", str(image.disk.resolve()), str(overlay)],
                       check=True, capture_output=True, text=True)
    except FileNotFoundError as exc:
        raise DriverError("qemu-img not found: install the Debian package qemu-utils") from exc
    except subprocess.CalledProcessError as exc:
        raise DriverError(f"cannot create the boot disk of {spec.deployable}/{spec.name} on "
                          f"{image.disk}: {exc.stderr.strip()}") from exc
    return replace(image, disk=overlay)


def netdev_option(image: VmImage, broker_url: str, netdev_id: str = "pcloudnet") -> str:
    """The ``-netdev`` value: isolated user networking with one forward, to the broker.

    The forward is a ``tcp:`` character device that QEMU itself connects (``reconnect``: again
    whenever the broker closes it), not a ``cmd:`` that forks a helper per connection, which
    libvirt's seccomp sandbox (``spawn=deny``) punishes by killing QEMU.
    """
    host, port = broker_endpoint(broker_url)
    # ",," is a literal comma inside a -netdev value: the chardev's own option
    forward = (f"tcp:{GUEST_BROKER_ADDR}:{image.guest_broker_port}-tcp:{host}:{port}"
               f",,reconnect={FORWARD_RECONNECT}")
    return f"user,id={netdev_id},restrict=on,guestfwd={forward}"


def nic_option(image: VmImage, netdev_id: str = "pcloudnet") -> str:
    """The ``-device`` value of the VM's one network card, with the MAC the image records,
    on a PCI slot libvirt never hands out itself."""
    return f"virtio-net-pci,netdev={netdev_id},mac={image.mac},addr={NIC_PCI_ADDR}"
