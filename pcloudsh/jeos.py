"""JEOS images: a minimal Debian root file system, kernel and initrd built with debootstrap."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import lzma
import os
import re
import shutil
import struct
import subprocess
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from pcloud.image_layout import DISK_NAME
from pcloudsh.image_catalogue import (
    JEOS_META,
    Image,
    ImageError,
    ImageExistsError,
    ImageNotFoundError,
    Progress,
    Steps,
    assembly_delete,
    assembly_list,
    build_dir,
    check_name,
    jeos_delete,
    jeos_get,
    publish,
    remove_tree,
    run_tool,
)

ROOT_LABEL = "jeosroot"
GUEST_DNS = "10.0.2.3"
RECIPE_VERSION = 3
#: initramfs-tools settings: the initrd only has to mount ext4 from a virtio disk, so it holds
#: just those modules (Debian's MODULES=most is 35 MiB, slow to unpack and probe under TCG)
INITRAMFS_CONF = "MODULES=list\nRESUME=none\n"
INITRAMFS_MODULES = ("virtio_pci", "virtio_blk", "ext4")
#: an initramfs-tools hook taking udev out of the initrd: its modules are loaded by name and
#: the kernel's devtmpfs makes /dev/vda, so starting udevd and waiting for it (1-2 s under TCG)
#: buys nothing; the root file system's udev takes over as usual
INITRAMFS_HOOK = """#!/bin/sh
[ "$1" = prereqs ] && exit 0
rm -f "$DESTDIR/scripts/init-top/udev" "$DESTDIR/scripts/init-bottom/udev" \\
      "$DESTDIR/usr/bin/udevadm" "$DESTDIR/usr/lib/systemd/systemd-udevd"
"""
#: units an assembly VM never needs, masked: under TCG each costs a process start or a module
#: load (0.1-1 s) on the one vCPU, mostly before the agent may start (sysinit.target)
MASKED_UNITS = (
    # timers of package maintenance, pointless on a disk that every boot starts afresh
    "apt-daily.timer", "apt-daily-upgrade.timer", "dpkg-db-backup.timer", "e2scrub_all.timer",
    "fstrim.timer", "e2scrub_reap.service",
    # cluster-glue's ha_logd, which resource-agents pulls in; nothing here logs to it
    "logd.service",
    # modules and file systems nothing uses (the kernel loads fuse, loop or dm on first use)
    "modprobe@drm.service", "modprobe@efi_pstore.service", "modprobe@dm_mod.service",
    "modprobe@loop.service", "modprobe@fuse.service", "modprobe@configfs.service",
    "sys-kernel-debug.mount", "sys-kernel-tracing.mount", "sys-kernel-config.mount",
    "sys-fs-fuse-connections.mount", "dev-hugepages.mount", "systemd-binfmt.service",
    "proc-sys-fs-binfmt_misc.automount", "systemd-pstore.service",
    "systemd-network-generator.service",
    # state a fresh overlay would only write and forget: the journal stays in memory
    # (JOURNALD_CONF), utmp, and a random seed that would be the same file in every boot of
    # every assembly (the kernel seeds itself)
    "systemd-journal-flush.service", "systemd-update-utmp.service",
    "systemd-update-utmp-runlevel.service", "systemd-random-seed.service",
    # the image's system users are made when it is built; the root file system is mounted
    # read-write by the initrd and remounts read-only on errors by its superblock (mkfs -e)
    "systemd-sysusers.service", "systemd-remount-fs.service",
    # the VGA console's login: the VMs have no display (the serial console keeps its getty)
    "getty@tty1.service",
)
#: generators for what these VMs never have (encrypted, verity or GPT-discovered disks,
#: hibernation, rc.local, SysV-only services), off: each is a process before any unit starts
OFF_GENERATORS = ("systemd-cryptsetup-generator", "systemd-gpt-auto-generator",
                  "systemd-hibernate-resume-generator", "systemd-integritysetup-generator",
                  "systemd-rc-local-generator", "systemd-run-generator",
                  "systemd-system-update-generator", "systemd-veritysetup-generator",
                  "systemd-sysv-generator")
#: kernel modules udev would load for devices of QEMU's pc machine that a guest never uses
#: (each costs a module load and signature check under TCG): KVM for the emulated CPU's svm
#: flag, CPU frequency, PC speaker, floppy, IDE, SMBus, wireless regulatory
BLACKLIST = ("kvm", "kvm_amd", "kvm_intel", "powernow_k8", "pcspkr", "floppy", "ata_piix",
             "ata_generic", "pata_acpi", "i2c_piix4", "cfg80211", "joydev", "serio_raw",
             "psmouse")
#: the journal stays in memory: every boot starts from the image, so nothing written to disk
#: would be read again
JOURNALD_CONF = "[Journal]\nStorage=volatile\n"


@dataclass(frozen=True)
class Distro:
    """One distribution JEOS images can be built from."""

    key: str
    suite: str
    packages: tuple[str, ...]


DEBIAN_12 = Distro(
    key="debian-12",
    suite="bookworm",
    packages=("systemd-sysv", "udev", "linux-image-amd64", "python3", "python3-qpid-proton",
              "python3-lxml", "python3-daemon", "iproute2", "netbase", "procps",
              "ca-certificates", "dbus", "resource-agents", "qemu-guest-agent"),
)
DISTROS = {"debian-12": DEBIAN_12}
DISTRO_ALIASES = {"debian12": "debian-12", "bookworm": "debian-12", "debian": "debian-12"}
ARCHES = {"x86_64": "amd64", "amd64": "amd64"}


def _resolve_distro(distro: str, arch: str) -> tuple[Distro, str]:
    key = DISTRO_ALIASES.get(distro.lower(), distro.lower())
    if key not in DISTROS:
        raise ImageError(f"distribution {distro!r} is not supported; supported: "
                         f"{', '.join(sorted(DISTROS))} (aliases: {', '.join(DISTRO_ALIASES)})")
    if arch not in ARCHES:
        raise ImageError(f"architecture {arch!r} is not supported; supported: x86_64")
    return DISTROS[key], "x86_64"


def _deb822_entries(text: str) -> Iterable[dict[str, str]]:
    for stanza in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        for line in stanza.splitlines():
            if line.startswith("#") or ":" not in line or line[:1].isspace():
                continue
            key, _, value = line.partition(":")
            fields[key.strip().lower()] = value.strip()
        if fields:
            yield fields


def apt_mirror(suite: str, apt_dir: Path = Path("/etc/apt")) -> str:
    """Return the mirror apt on this host uses for ``suite`` (main component).

    Reads deb822 ``sources.list.d/*.sources`` and one-line ``sources.list`` style files;
    ``PCLOUD_DEBIAN_MIRROR`` overrides.
    """
    override = os.environ.get("PCLOUD_DEBIAN_MIRROR")
    if override:
        return override
    for path in sorted(apt_dir.glob("sources.list.d/*.sources")):
        for entry in _deb822_entries(path.read_text()):
            if (entry.get("enabled", "yes") != "no" and "deb" in entry.get("types", "").split()
                    and suite in entry.get("suites", "").split()
                    and "main" in entry.get("components", "").split()):
                return entry.get("uris", "").split()[0]
    lists = [apt_dir / "sources.list", *sorted(apt_dir.glob("sources.list.d/*.list"))]
    for path in lists:
        if not path.is_file():
            continue
        for line in path.read_text().splitlines():
            words = re.sub(r"\[[^]]*\]", "", line.split("#", 1)[0]).split()
            if len(words) >= 4 and words[0] == "deb" and words[2] == suite and "main" in words[3:]:
                return words[1]
    raise ImageError(f"no apt source for {suite} main found under {apt_dir}; "
                     "set PCLOUD_DEBIAN_MIRROR to a Debian mirror URL")


class _StageLines:
    """Selects debootstrap's stage lines; of its per-package lines only every 40th passes."""

    PER_PACKAGE = re.compile(r"^I: (Retrieving|Validating|Extracting|Unpacking|Configuring) "
                             r"(?!.*packages\.\.\.$)\S+( \S+)?$")

    def __init__(self) -> None:
        self._packages = 0

    def __call__(self, line: str) -> bool:
        if self.PER_PACKAGE.match(line):
            self._packages += 1
            return self._packages % 40 == 1
        return line.startswith(("I: ", "W: ", "E: "))


def _configure_root(root: Path) -> None:
    """Make a debootstrapped tree bootable as a generic VM and free of host or build traces."""
    (root / "etc/hostname").write_text("jeos\n")
    (root / "etc/hosts").write_text("127.0.0.1\tlocalhost\n127.0.1.1\tjeos\n")
    resolv = root / "etc/resolv.conf"
    resolv.unlink(missing_ok=True)
    resolv.write_text(f"nameserver {GUEST_DNS}\n")
    (root / "etc/machine-id").write_text("")
    (root / "var/lib/dbus/machine-id").unlink(missing_ok=True)
    # no fsck (pass 0): every boot starts from the image as built, a clean file system
    (root / "etc/fstab").write_text(f"LABEL={ROOT_LABEL}\t/\text4\trw,errors=remount-ro\t0\t0\n")
    network = root / "etc/systemd/network"
    network.mkdir(parents=True, exist_ok=True)
    (network / "80-pcloud-dhcp.network").write_text(
        "[Match]\nName=en* eth*\n\n[Network]\nDHCP=ipv4\n")
    subprocess.run(["systemctl", f"--root={root}", "enable", "systemd-networkd.service"],
                   check=True, capture_output=True)
    _trim_boot(root)
    for pattern in ("var/cache/apt/archives/*.deb", "var/cache/apt/*.bin",
                    "var/lib/apt/lists/*_*", "var/log/*.log"):
        for leftover in root.glob(pattern):
            leftover.unlink()


def _trim_boot(root: Path) -> None:
    """Take out of the boot what an assembly VM never uses (see ``MASKED_UNITS`` and below):
    under TCG a boot is CPU-bound on one vCPU, so every unit, generator and module counts."""
    subprocess.run(["systemctl", f"--root={root}", "mask", *MASKED_UNITS],
                   check=True, capture_output=True)
    generators = root / "etc/systemd/system-generators"
    generators.mkdir(parents=True, exist_ok=True)
    for name in OFF_GENERATORS:
        (generators / name).symlink_to("/dev/null")
    (root / "etc/modprobe.d/pcloud-blacklist.conf").write_text(
        "".join(f"blacklist {module}\n" for module in BLACKLIST))
    journald = root / "etc/systemd/journald.conf.d"
    journald.mkdir(parents=True, exist_ok=True)
    (journald / "pcloud.conf").write_text(JOURNALD_CONF)
    initramfs = root / "etc/initramfs-tools"
    (initramfs / "conf.d/pcloud.conf").write_text(INITRAMFS_CONF)
    (initramfs / "modules").write_text("".join(f"{module}\n" for module in INITRAMFS_MODULES))
    hook = initramfs / "hooks/pcloud-no-udev"
    hook.write_text(INITRAMFS_HOOK)
    hook.chmod(0o755)
    subprocess.run(["chroot", str(root), "update-initramfs", "-u", "-k", "all"],
                   check=True, capture_output=True)


#: the ELF note of a kernel QEMU can start at its PVH entry (XEN_ELFNOTE_PHYS32_ENTRY)
PVH_NOTE = struct.pack("<III", 4, 8, 18) + b"Xen\0"


def pvh_kernel(bzimage: bytes) -> bytes | None:
    """The uncompressed ELF kernel inside a bzImage, if QEMU can boot it directly (PVH).

    QEMU loads such an ELF straight into the guest's memory and jumps to its PVH entry, where a
    bzImage first decompresses itself: 2.5-3 s of a TCG boot for Debian's 8 MiB xz kernel.
    None when the payload is neither xz nor gzip or the kernel has no PVH entry.
    """
    if len(bzimage) < 0x250 or bzimage[0x202:0x206] != b"HdrS":
        return None
    setup_sectors = bzimage[0x1F1] or 4
    offset, length = struct.unpack_from("<II", bzimage, 0x248)
    start = (setup_sectors + 1) * 512 + offset
    payload = bzimage[start:start + length]
    try:
        if payload.startswith(b"\xfd7zXZ\x00"):
            elf = lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(payload)
        elif payload.startswith(b"\x1f\x8b"):
            elf = gzip.GzipFile(fileobj=io.BytesIO(payload)).read()
        else:
            return None
    except (lzma.LZMAError, OSError, EOFError):
        return None
    return elf if elf.startswith(b"\x7fELF") and PVH_NOTE in elf else None


def _copy_boot_files(root: Path, out: Path) -> tuple[str, str]:
    """Put the kernel (uncompressed when it boots so) and the initrd beside the image."""
    kernels = sorted((root / "boot").glob("vmlinuz-*"))
    if not kernels:
        raise ImageError("debootstrap installed no kernel into /boot")
    version = kernels[-1].name.removeprefix("vmlinuz-")
    initrd = root / "boot" / f"initrd.img-{version}"
    if not initrd.is_file():
        raise ImageError(f"no initrd for kernel {version} in the image")
    shutil.copyfile(initrd, out / "initrd.img")
    elf = pvh_kernel(kernels[-1].read_bytes())
    if elf is None:
        shutil.copyfile(kernels[-1], out / "vmlinuz")
        return version, "vmlinuz"
    (out / "vmlinux").write_bytes(elf)
    return version, "vmlinux"


def jeos_recipe(distro: str = "debian-12") -> str:
    """A short digest of how a JEOS is built: a cached image with another digest is stale."""
    spec, _ = _resolve_distro(distro, "x86_64")
    text = json.dumps([RECIPE_VERSION, spec.key, spec.suite, list(spec.packages),
                       INITRAMFS_CONF, INITRAMFS_MODULES, INITRAMFS_HOOK, MASKED_UNITS,
                       OFF_GENERATORS, BLACKLIST, JOURNALD_CONF])
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def jeos_name(distro: str = "debian-12", arch: str = "x86_64") -> str:
    """The catalogue name of the JEOS built for a distribution and architecture."""
    resolved, canonical_arch = _resolve_distro(distro, arch)
    return f"{resolved.key}-{canonical_arch}"


def jeos_create(distro: str, arch: str, catalogue_dir: str | Path,
                progress: Progress | None = None, *, name: str | None = None,
                mirror: str | None = None, disk_size: str = "2G",
                extra_packages: Iterable[str] = ()) -> Image:
    """Build a JEOS image (root file system, kernel and initrd) into ``catalogue_dir/jeos``.

    Takes about two minutes here; ``progress`` receives the steps with their elapsed time.
    ``extra_packages`` adds Debian packages the assemblies' resources need (e.g.
    ``apache2`` for the httpd template; ``resource-agents`` is always there, so every
    assembly can run OCF resources). Raises ImageExistsError if the JEOS is already there.
    """
    spec, canonical_arch = _resolve_distro(distro, arch)
    name = name or f"{spec.key}-{canonical_arch}"
    check_name(name, "JEOS")
    parent = Path(catalogue_dir) / "jeos"
    dest = parent / name
    if dest.exists():
        raise ImageExistsError(f"JEOS {name!r} already exists in {parent}")
    for tool in ("debootstrap", "mkfs.ext4", "qemu-img", "systemctl"):
        if shutil.which(tool) is None:
            raise ImageError(f"{tool} not found: install debootstrap, e2fsprogs and qemu-utils")
    steps = Steps(progress)
    packages = [*spec.packages, *(p for p in extra_packages if p not in spec.packages)]
    source = mirror or apt_mirror(spec.suite)
    build = build_dir(parent)
    try:
        root, out = build / "root", build / "out"
        out.mkdir()
        steps.say(f"debootstrap {spec.suite} ({ARCHES[canonical_arch]}, minbase) from {source}")
        run_tool(["debootstrap", "--variant=minbase", f"--arch={ARCHES[canonical_arch]}",
                  f"--include={','.join(packages)}", spec.suite, str(root), source],
                 steps, show=_StageLines(), env={"DEBIAN_FRONTEND": "noninteractive"})
        steps.say("configuring: hostname, resolv.conf, machine-id, fstab, networkd; cleaning")
        _configure_root(root)
        kernel_version, kernel = _copy_boot_files(root, out)
        steps.say(f"ext4 file system ({disk_size}) from the tree")
        raw = build / "disk.raw"
        run_tool(["mkfs.ext4", "-q", "-F", "-L", ROOT_LABEL, "-e", "remount-ro", "-d", str(root),
                  str(raw), disk_size], steps)
        remove_tree(root)
        steps.say("converting to qcow2")
        run_tool(["qemu-img", "convert", "-O", "qcow2", str(raw), str(out / DISK_NAME)], steps)
        raw.unlink()
        meta = {"name": name, "distro": spec.key, "suite": spec.suite, "arch": canonical_arch,
                "disk": DISK_NAME, "kernel": kernel, "initrd": "initrd.img",
                "kernel_version": kernel_version, "packages": packages,
                "recipe": jeos_recipe(spec.key),
                "mirror": source, "disk_size": disk_size,
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "build_seconds": round(steps.elapsed, 1)}
        return publish(out, dest, JEOS_META, meta, steps, f"JEOS {name}")
    finally:
        remove_tree(build)


def jeos_ensure(distro: str, arch: str, catalogue_dir: str | Path,
                progress: Progress | None = None, *, replace_stale: bool = False) -> Image:
    """Return the JEOS for ``distro``/``arch``, building it first if it is missing.

    With ``replace_stale``, an image built by an older recipe is deleted (with the assemblies
    on it) and rebuilt: meant for caches such as the test suite's.
    """
    name = jeos_name(distro, arch)
    try:
        image = jeos_get(name, catalogue_dir)
    except ImageNotFoundError:
        image = None
    if image is not None and replace_stale and image.meta.get("recipe") != jeos_recipe(distro):
        if progress is not None:
            progress(f"JEOS {name} was built by another recipe: rebuilding")
        for assembly in assembly_list(catalogue_dir):
            if assembly.meta.get("jeos") == name:
                assembly_delete(assembly.name, catalogue_dir)
        jeos_delete(name, catalogue_dir)
        image = None
    if image is not None:
        return image
    try:
        return jeos_create(distro, arch, catalogue_dir, progress)
    except ImageExistsError:
        return jeos_get(name, catalogue_dir)

