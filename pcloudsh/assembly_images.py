"""Assembly images: a qcow2 overlay on a JEOS with the guest agent and an identity baked in."""

from __future__ import annotations

import json
import secrets
import shutil
import time
import uuid as uuidlib
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from pcloud.image_layout import ASSEMBLY_META, DISK_NAME, GUEST_BROKER_ADDR
from pcloud.urls import mask_url
from pcloudsh import guest_payload
from pcloudsh.guestfs_support import open_disk
from pcloudsh.image_catalogue import (
    Image,
    ImageError,
    ImageExistsError,
    Progress,
    Steps,
    assembly_get,
    build_dir,
    check_name,
    jeos_get,
    publish,
    remove_tree,
    run_tool,
)
from pcloudsh.image_packages import install_packages

# Baked into an image made for no deployable in particular. The VM drivers pass the real
# names on the kernel command line, which the agent prefers (``kernel_cmdline = yes``).
UNASSIGNED = "unassigned"


def guest_broker_url(broker_url: str) -> str:
    """The broker URL as a VM sees it: same scheme and port, the forward address, and no
    credentials: an image holds no secret; every boot gets its own login through QEMU's
    fw_cfg (docs/security.md)."""
    parts = urlsplit(broker_url)
    if parts.scheme not in ("amqp", "amqps") or not parts.hostname:
        raise ImageError(f"broker URL {redact_url(broker_url)!r} is not "
                         "amqp://[user:pass@]host[:port]")
    port = parts.port or (5671 if parts.scheme == "amqps" else 5672)
    return urlunsplit((parts.scheme, f"{GUEST_BROKER_ADDR}:{port}", parts.path, "", ""))


def _random_mac() -> str:
    tail = secrets.token_bytes(3)
    return "52:54:00:" + ":".join(f"{b:02x}" for b in tail)


def _hostname(name: str) -> str:
    return name.replace("_", "-").strip("-").lower() or "assembly"


def redact_url(url: str) -> str:
    """A URL without its password, for metadata and messages (pcloud's one masking rule)."""
    return mask_url(url)


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


def _assembly_meta(ident: dict[str, Any], jeos: Image, steps: Steps,
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
    check_name(name, "assembly")
    base = jeos_get(jeos, catalogue_dir)
    parent = Path(catalogue_dir) / "assemblies"
    dest = parent / name
    if dest.exists():
        return _existing(name, dest, exist_ok, lambda a: a.meta.get("jeos") == jeos
                         and a.meta.get("deployable") == deployable)
    steps = Steps(progress)
    ident = _identity(name, deployable, uuid, broker_url, heartbeat_interval)
    payload = guest_payload.collect()
    build = build_dir(parent)
    try:
        disk = build / DISK_NAME
        steps.say(f"overlay on JEOS {jeos}")
        run_tool(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(base.disk.resolve()),
                  "-F", "qcow2", str(disk)], steps)
        disk.chmod(0o600)
        steps.say("libguestfs: guest agent, its config and unit, identity")
        with open_disk(disk) as g:
            guest_payload.install(g, payload, build)
            _bake_identity(g, ident)
        meta = _assembly_meta(ident, base, steps, created_from=f"jeos:{jeos}")
        return publish(build, dest, ASSEMBLY_META, meta, steps, f"assembly {name}")
    finally:
        remove_tree(build)


def assembly_clone(src: str, dst: str, catalogue_dir: str | Path, *, uuid: str | None = None,
                   deployable: str | None = None, broker_url: str | None = None,
                   progress: Progress | None = None) -> Image:
    """Copy an assembly under a new name with a fresh identity (uuid, machine-id, MAC, host name).

    The copy keeps the source's JEOS as its base and everything written into the source;
    the agent's state is cleared. ``deployable`` and ``broker_url`` default to the source's.
    """
    check_name(dst, "assembly")
    source = assembly_get(src, catalogue_dir)
    base = jeos_get(source.meta["jeos"], catalogue_dir)
    dest = source.path.parent / dst
    if dest.exists():
        raise ImageExistsError(f"assembly {dst!r} already exists in {dest.parent}")
    steps = Steps(progress)
    build = build_dir(source.path.parent)
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
        return publish(build, dest, ASSEMBLY_META, meta, steps, f"assembly {dst}")
    finally:
        remove_tree(build)


def assembly_install(name: str, packages: list[str], catalogue_dir: str | Path,
                     progress: Progress | None = None) -> list[str]:
    """Install Debian packages (a template's software, e.g. apache2 for httpd) into an
    assembly's image; returns those that were missing. Its metadata lists what was added."""
    image = assembly_get(name, catalogue_dir)
    added = install_packages(image.disk, packages, progress)
    if added:
        meta = dict(image.meta)
        meta["packages"] = sorted({*meta.get("packages", []), *added})
        tmp = image.path / (ASSEMBLY_META + ".tmp")
        tmp.write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        tmp.replace(image.path / ASSEMBLY_META)
    return added
