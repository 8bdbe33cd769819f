"""JEOS and assembly images in the catalogue: built with debootstrap, edited with libguestfs.

Layout under a catalogue directory::

    jeos/<name>/disk.qcow2  vmlinuz  initrd.img  jeos.json
    assemblies/<name>/disk.qcow2 (qcow2 overlay on its JEOS)  assembly.json

Every build happens in a hidden folder beside its destination and is renamed into place at the
end, so a failed or interrupted build never leaves a half-made image in the catalogue.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shutil
import subprocess
import tempfile
import time
import uuid as uuidlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from dpe_agent.drivers.vmboot import ASSEMBLY_META, DISK_NAME, GUEST_BROKER_ADDR
from pcloudsh import guest_payload
from pcloudsh.guestfs_support import open_disk

Progress = Callable[[str], None]

JEOS_META = "jeos.json"
ROOT_LABEL = "jeosroot"
GUEST_DNS = "10.0.2.3"
RECIPE_VERSION = 2
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$")
# Baked into an image made for no deployable in particular. The VM drivers pass the real
# names on the kernel command line, which the agent prefers (``kernel_cmdline = yes``).
UNASSIGNED = "unassigned"


class ImageError(Exception):
    """An image operation failed; the message says what and why."""


class ImageExistsError(ImageError):
    """The image to create is already in the catalogue."""


class ImageNotFoundError(ImageError):
    """The image named is not in the catalogue."""


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
              "ca-certificates", "dbus"),
)
DISTROS = {"debian-12": DEBIAN_12}
DISTRO_ALIASES = {"debian12": "debian-12", "bookworm": "debian-12", "debian": "debian-12"}
ARCHES = {"x86_64": "amd64", "amd64": "amd64"}


@dataclass(frozen=True)
class Image:
    """A JEOS or assembly image in the catalogue: its folder and its metadata."""

    name: str
    path: Path
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def disk(self) -> Path:
        return self.path / self.meta.get("disk", DISK_NAME)


class _Steps:
    """Reports steps and their elapsed time to a progress callback."""

    def __init__(self, progress: Progress | None) -> None:
        self._progress = progress
        self._start = time.monotonic()

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self._start

    def say(self, text: str) -> None:
        if self._progress is not None:
            self._progress(f"[{self.elapsed:6.1f}s] {text}")


def _check_name(name: str, what: str) -> None:
    if not NAME_RE.match(name):
        raise ImageError(f"{what} name {name!r} is not valid: use letters, digits, '_' and '-'")


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


def _run(cmd: list[str], steps: _Steps, show: Callable[[str], bool] | None = None,
         env: dict[str, str] | None = None) -> None:
    """Run a command, passing the output lines ``show`` selects to the progress callback."""
    tail: list[str] = []
    try:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                errors="replace", env={**os.environ, **(env or {})})
    except OSError as exc:
        raise ImageError(f"cannot run {cmd[0]}: {exc}") from exc
    assert proc.stdout is not None
    for raw in proc.stdout:
        line = raw.rstrip()
        tail = (tail + [line])[-20:]
        if show is not None and show(line):
            steps.say(f"{Path(cmd[0]).name}: {line}")
    if proc.wait() != 0:
        detail = "\n".join(tail)
        raise ImageError(f"{' '.join(cmd[:2])} failed (exit {proc.returncode}):\n{detail}")


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


def _unmount_below(root: Path) -> None:
    """Unmount what an interrupted debootstrap left mounted inside ``root`` (deepest first)."""
    prefix = str(root.resolve()) + "/"
    with open("/proc/self/mounts") as mounts:
        points = [line.split()[1] for line in mounts if line.split()[1].startswith(prefix)]
    for point in sorted(points, key=len, reverse=True):
        subprocess.run(["umount", "-l", point], check=False)


def _remove_tree(path: Path) -> None:
    if path.exists():
        _unmount_below(path)
        subprocess.run(["rm", "-rf", "--one-file-system", str(path)], check=False)


def _configure_root(root: Path) -> None:
    """Make a debootstrapped tree bootable as a generic VM and free of host or build traces."""
    (root / "etc/hostname").write_text("jeos\n")
    (root / "etc/hosts").write_text("127.0.0.1\tlocalhost\n127.0.1.1\tjeos\n")
    resolv = root / "etc/resolv.conf"
    resolv.unlink(missing_ok=True)
    resolv.write_text(f"nameserver {GUEST_DNS}\n")
    (root / "etc/machine-id").write_text("")
    (root / "var/lib/dbus/machine-id").unlink(missing_ok=True)
    (root / "etc/fstab").write_text(f"LABEL={ROOT_LABEL}\t/\text4\trw,errors=remount-ro\t0\t1\n")
    network = root / "etc/systemd/network"
    network.mkdir(parents=True, exist_ok=True)
    (network / "80-pcloud-dhcp.network").write_text(
        "[Match]\nName=en* eth*\n\n[Network]\nDHCP=ipv4\n")
    subprocess.run(["systemctl", f"--root={root}", "enable", "systemd-networkd.service"],
                   check=True, capture_output=True)
    for pattern in ("var/cache/apt/archives/*.deb", "var/cache/apt/*.bin",
                    "var/lib/apt/lists/*_*", "var/log/*.log"):
        for leftover in root.glob(pattern):
            leftover.unlink()


def _copy_boot_files(root: Path, out: Path) -> str:
    kernels = sorted((root / "boot").glob("vmlinuz-*"))
    if not kernels:
        raise ImageError("debootstrap installed no kernel into /boot")
    version = kernels[-1].name.removeprefix("vmlinuz-")
    initrd = root / "boot" / f"initrd.img-{version}"
    if not initrd.is_file():
        raise ImageError(f"no initrd for kernel {version} in the image")
    shutil.copyfile(kernels[-1], out / "vmlinuz")
    shutil.copyfile(initrd, out / "initrd.img")
    return version


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def _publish(build: Path, dest: Path) -> None:
    """Move a finished build into place; the catalogue never shows a partial image."""
    build.chmod(0o755)
    try:
        os.rename(build, dest)
    except OSError as exc:
        if dest.exists():
            raise ImageExistsError(f"{dest} appeared while building") from exc
        raise ImageError(f"cannot move {build} to {dest}: {exc}") from exc


def _build_dir(parent: Path) -> Path:
    parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=".build-", dir=parent))


def jeos_recipe(distro: str = "debian-12") -> str:
    """A short digest of how a JEOS is built: a cached image with another digest is stale."""
    spec, _ = _resolve_distro(distro, "x86_64")
    text = json.dumps([RECIPE_VERSION, spec.key, spec.suite, list(spec.packages)])
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
    ``resource-agents`` for OCF resources). Raises ImageExistsError if the JEOS is already there.
    """
    spec, canonical_arch = _resolve_distro(distro, arch)
    name = name or f"{spec.key}-{canonical_arch}"
    _check_name(name, "JEOS")
    parent = Path(catalogue_dir) / "jeos"
    dest = parent / name
    if dest.exists():
        raise ImageExistsError(f"JEOS {name!r} already exists in {parent}")
    for tool in ("debootstrap", "mkfs.ext4", "qemu-img", "systemctl"):
        if shutil.which(tool) is None:
            raise ImageError(f"{tool} not found: install debootstrap, e2fsprogs and qemu-utils")
    steps = _Steps(progress)
    packages = [*spec.packages, *(p for p in extra_packages if p not in spec.packages)]
    source = mirror or apt_mirror(spec.suite)
    build = _build_dir(parent)
    try:
        root, out = build / "root", build / "out"
        out.mkdir()
        steps.say(f"debootstrap {spec.suite} ({ARCHES[canonical_arch]}, minbase) from {source}")
        _run(["debootstrap", "--variant=minbase", f"--arch={ARCHES[canonical_arch]}",
              f"--include={','.join(packages)}", spec.suite, str(root), source],
             steps, show=_StageLines(), env={"DEBIAN_FRONTEND": "noninteractive"})
        steps.say("configuring: hostname, resolv.conf, machine-id, fstab, networkd; cleaning")
        _configure_root(root)
        kernel_version = _copy_boot_files(root, out)
        steps.say(f"ext4 file system ({disk_size}) from the tree")
        raw = build / "disk.raw"
        _run(["mkfs.ext4", "-q", "-F", "-L", ROOT_LABEL, "-d", str(root), str(raw), disk_size],
             steps)
        _remove_tree(root)
        steps.say("converting to qcow2")
        _run(["qemu-img", "convert", "-O", "qcow2", str(raw), str(out / DISK_NAME)], steps)
        raw.unlink()
        meta = {"name": name, "distro": spec.key, "suite": spec.suite, "arch": canonical_arch,
                "disk": DISK_NAME, "kernel": "vmlinuz", "initrd": "initrd.img",
                "kernel_version": kernel_version, "packages": packages,
                "recipe": jeos_recipe(spec.key),
                "mirror": source, "disk_size": disk_size,
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "build_seconds": round(steps.elapsed, 1)}
        _write_json(out / JEOS_META, meta)
        _publish(out, dest)
        steps.say(f"JEOS {name} ready in {dest}")
        return Image(name, dest, meta)
    finally:
        _remove_tree(build)


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


def _list(folder: Path, meta_name: str) -> list[Image]:
    images = []
    if folder.is_dir():
        for entry in sorted(folder.iterdir()):
            meta_file = entry / meta_name
            if entry.name.startswith(".") or not meta_file.is_file():
                continue
            try:
                images.append(Image(entry.name, entry, json.loads(meta_file.read_text())))
            except ValueError:
                continue
    return images


def jeos_list(catalogue_dir: str | Path) -> list[Image]:
    """The JEOS images in the catalogue, by name."""
    return _list(Path(catalogue_dir) / "jeos", JEOS_META)


def jeos_get(name: str, catalogue_dir: str | Path) -> Image:
    """One JEOS image; ImageNotFoundError if it is not in the catalogue."""
    for image in jeos_list(catalogue_dir):
        if image.name == name:
            return image
    raise ImageNotFoundError(f"JEOS {name!r} not found in {Path(catalogue_dir) / 'jeos'}")


def _discard(path: Path) -> None:
    """Remove a catalogue folder: first renamed out of sight, so removal looks atomic."""
    trash = path.with_name(f".delete-{path.name}-{secrets.token_hex(4)}")
    os.rename(path, trash)
    shutil.rmtree(trash, ignore_errors=True)


def jeos_delete(name: str, catalogue_dir: str | Path, *, force: bool = False) -> None:
    """Delete a JEOS image; refused while assemblies are built on it, unless ``force``."""
    image = jeos_get(name, catalogue_dir)
    users = [a.name for a in assembly_list(catalogue_dir) if a.meta.get("jeos") == name]
    if users and not force:
        raise ImageError(f"JEOS {name!r} is the base of assemblies {', '.join(users)}; "
                         "delete them first")
    _discard(image.path)


def guest_broker_url(broker_url: str) -> str:
    """The broker URL as a VM sees it: same scheme, credentials and port, the forward address."""
    parts = urlsplit(broker_url)
    if parts.scheme not in ("amqp", "amqps") or not parts.hostname:
        raise ImageError(f"broker URL {broker_url!r} is not amqp://[user:pass@]host[:port]")
    port = parts.port or (5671 if parts.scheme == "amqps" else 5672)
    userinfo = parts.netloc.rpartition("@")[0]
    netloc = f"{userinfo}@" if userinfo else ""
    return urlunsplit((parts.scheme, f"{netloc}{GUEST_BROKER_ADDR}:{port}", parts.path, "", ""))


def _random_mac() -> str:
    tail = secrets.token_bytes(3)
    return "52:54:00:" + ":".join(f"{b:02x}" for b in tail)


def _hostname(name: str) -> str:
    return name.replace("_", "-").strip("-").lower() or "assembly"


def redact_url(url: str) -> str:
    """A URL without its password, for metadata and messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username}:***@{parts.netloc.rpartition('@')[2]}"
    return urlunsplit(parts._replace(netloc=netloc))


def _identity(name: str, deployable: str, asm_uuid: str | None, broker_url: str,
              heartbeat_interval: float) -> dict[str, Any]:
    guest_url = guest_broker_url(broker_url)
    return {"name": name, "deployable": deployable, "uuid": asm_uuid or str(uuidlib.uuid4()),
            "machine_id": uuidlib.uuid4().hex, "hostname": _hostname(name), "mac": _random_mac(),
            "guest_broker_url": guest_url,
            "guest_broker_port": urlsplit(guest_url).port,
            "heartbeat_interval": heartbeat_interval}


def _public(ident: dict[str, Any]) -> dict[str, Any]:
    """The identity as stored beside the image: the broker password stays inside the image."""
    return {**ident, "guest_broker_url": redact_url(ident["guest_broker_url"])}


def _bake_identity(g: Any, ident: dict[str, Any]) -> None:
    """Write the per-assembly identity and agent configuration into a mounted image."""
    g.write("/etc/machine-id", f"{ident['machine_id']}\n".encode())
    g.write("/etc/hostname", f"{ident['hostname']}\n".encode())
    g.write("/etc/hosts", f"127.0.0.1\tlocalhost\n127.0.1.1\t{ident['hostname']}\n".encode())
    g.mkdir_p(guest_payload.CONFIG_PATH.rsplit("/", 1)[0])
    g.write(guest_payload.CONFIG_PATH, guest_payload.agent_config(ident).encode())
    g.chmod(0o600, guest_payload.CONFIG_PATH)
    if g.is_dir(guest_payload.STATE_DIR):
        g.rm_rf(guest_payload.STATE_DIR)


def assembly_list(catalogue_dir: str | Path) -> list[Image]:
    """The assembly images in the catalogue, by name."""
    return _list(Path(catalogue_dir) / "assemblies", ASSEMBLY_META)


def assembly_get(name: str, catalogue_dir: str | Path) -> Image:
    """One assembly image; ImageNotFoundError if it is not in the catalogue."""
    for image in assembly_list(catalogue_dir):
        if image.name == name:
            return image
    raise ImageNotFoundError(f"assembly {name!r} not found in "
                             f"{Path(catalogue_dir) / 'assemblies'}")


def _assembly_meta(ident: dict[str, Any], jeos: Image, steps: _Steps,
                   created_from: str) -> dict[str, Any]:
    return {**_public(ident), "jeos": jeos.name, "disk": DISK_NAME, "created_from": created_from,
            "kernel": str(jeos.path / jeos.meta.get("kernel", "vmlinuz")),
            "initrd": str(jeos.path / jeos.meta.get("initrd", "initrd.img")),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "build_seconds": round(steps.elapsed, 1)}


def _existing(name: str, dest: Path, exist_ok: bool, same: Callable[[Image], bool]) -> Image:
    image = Image(name, dest, json.loads((dest / ASSEMBLY_META).read_text()))
    if exist_ok and same(image):
        return image
    raise ImageExistsError(f"assembly {name!r} already exists in {dest.parent}")


def assembly_create(name: str, jeos: str, catalogue_dir: str | Path, *, broker_url: str,
                    deployable: str = UNASSIGNED, uuid: str | None = None,
                    heartbeat_interval: float = 1.0, progress: Progress | None = None,
                    exist_ok: bool = False) -> Image:
    """Create an assembly: a qcow2 overlay on ``jeos`` with the guest agent baked in.

    ``broker_url`` is the broker as the host sees it, with the credentials this assembly's
    agent uses; the image gets the same URL pointed at the guest's forward address (only its
    port and credentials matter: the VM driver forwards that port to the DPE's broker).
    ``deployable``, the assembly name, ``uuid`` and ``heartbeat_interval`` are defaults only:
    a VM driver boots the image with the deployable's values on the kernel command line. With
    ``exist_ok``, an existing assembly of the same JEOS and deployable is returned as is.
    """
    _check_name(name, "assembly")
    base = jeos_get(jeos, catalogue_dir)
    parent = Path(catalogue_dir) / "assemblies"
    dest = parent / name
    if dest.exists():
        return _existing(name, dest, exist_ok, lambda a: a.meta.get("jeos") == jeos
                         and a.meta.get("deployable") == deployable)
    steps = _Steps(progress)
    ident = _identity(name, deployable, uuid, broker_url, heartbeat_interval)
    payload = guest_payload.collect()
    build = _build_dir(parent)
    try:
        disk = build / DISK_NAME
        steps.say(f"overlay on JEOS {jeos}")
        _run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(base.disk.resolve()),
              "-F", "qcow2", str(disk)], steps)
        disk.chmod(0o600)
        steps.say("libguestfs: guest agent, its config and unit, identity")
        with open_disk(disk) as g:
            guest_payload.install(g, payload, build)
            _bake_identity(g, ident)
        meta = _assembly_meta(ident, base, steps, created_from=f"jeos:{jeos}")
        _write_json(build / ASSEMBLY_META, meta)
        _publish(build, dest)
        steps.say(f"assembly {name} ready in {dest}")
        return Image(name, dest, meta)
    finally:
        _remove_tree(build)


def assembly_clone(src: str, dst: str, catalogue_dir: str | Path, *, uuid: str | None = None,
                   deployable: str | None = None, broker_url: str | None = None,
                   progress: Progress | None = None) -> Image:
    """Copy an assembly under a new name with a fresh identity (uuid, machine-id, MAC, host name).

    The copy keeps the source's JEOS as its base and everything written into the source;
    the agent's state is cleared. ``deployable`` and ``broker_url`` default to the source's.
    """
    _check_name(dst, "assembly")
    source = assembly_get(src, catalogue_dir)
    base = jeos_get(source.meta["jeos"], catalogue_dir)
    dest = source.path.parent / dst
    if dest.exists():
        raise ImageExistsError(f"assembly {dst!r} already exists in {dest.parent}")
    steps = _Steps(progress)
    build = _build_dir(source.path.parent)
    try:
        disk = build / DISK_NAME
        steps.say(f"copying {src}'s overlay")
        shutil.copyfile(source.disk, disk)
        disk.chmod(0o600)
        steps.say("libguestfs: fresh identity and agent config")
        with open_disk(disk) as g:
            baked = guest_payload.read_agent_config(g)
            ident = _identity(dst, deployable or source.meta["deployable"], uuid,
                              broker_url or baked.get("broker_url", ""),
                              source.meta.get("heartbeat_interval", 1.0))
            _bake_identity(g, ident)
        meta = _assembly_meta(ident, base, steps, created_from=f"assembly:{src}")
        _write_json(build / ASSEMBLY_META, meta)
        _publish(build, dest)
        steps.say(f"assembly {dst} ready in {dest}")
        return Image(dst, dest, meta)
    finally:
        _remove_tree(build)


def assembly_delete(name: str, catalogue_dir: str | Path) -> None:
    """Delete an assembly image (its overlay and metadata); its JEOS stays."""
    _discard(assembly_get(name, catalogue_dir).path)
