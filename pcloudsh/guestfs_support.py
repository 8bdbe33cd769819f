"""Access to libguestfs's Python bindings from pcloud's virtualenv.

The bindings exist only as Debian's ``python3-guestfs``, built for the system Python 3.11. A
virtualenv does not see ``/usr/lib/python3/dist-packages``, and adding all of it would expose
dozens of Debian packages to pip. Instead, when ``import guestfs`` fails, this module makes a
folder holding symlinks to just the two files of the bindings and puts it on ``sys.path``.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.machinery
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

SYSTEM_DIST_PACKAGES = Path("/usr/lib/python3/dist-packages")


class GuestfsUnavailable(ImportError):
    """libguestfs's Python bindings cannot be loaded; the message says what to install."""


def _shim_dir() -> Path:
    tag = sys.implementation.cache_tag or "python"
    return Path(tempfile.gettempdir()) / f"pcloud-guestfs-{tag}-{os.getuid()}"


def _extension_file(dist: Path) -> Path | None:
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        candidate = dist / f"libguestfsmod{suffix}"
        if candidate.is_file():
            return candidate
    return None


def _link(target: Path, link: Path) -> None:
    if link.is_symlink() and Path(os.readlink(link)) == target:
        return
    tmp = link.with_name(f".{link.name}.{os.getpid()}")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    tmp.symlink_to(target)
    tmp.replace(link)


def load_guestfs(dist: Path = SYSTEM_DIST_PACKAGES) -> ModuleType:
    """Import ``guestfs``, exposing Debian's bindings through a symlink folder if needed."""
    try:
        return importlib.import_module("guestfs")
    except ImportError:
        pass
    module_file = dist / "guestfs.py"
    extension = _extension_file(dist)
    if not module_file.is_file() or extension is None:
        raise GuestfsUnavailable(
            f"libguestfs Python bindings for Python {sys.version_info.major}."
            f"{sys.version_info.minor} not found in {dist}: install the Debian package "
            "python3-guestfs (and linux-image-amd64 for its appliance)")
    shim = _shim_dir()
    shim.mkdir(mode=0o755, parents=True, exist_ok=True)
    _link(module_file, shim / module_file.name)
    _link(extension, shim / extension.name)
    if str(shim) not in sys.path:
        sys.path.append(str(shim))
    importlib.invalidate_caches()
    try:
        return importlib.import_module("guestfs")
    except ImportError as exc:
        raise GuestfsUnavailable(f"libguestfs bindings in {dist} do not load: {exc}") from exc


def guestfs_available() -> str | None:
    """Return None when libguestfs can be used, else why not (for skips and error messages)."""
    try:
        load_guestfs()
    except GuestfsUnavailable as exc:
        return str(exc)
    if not any(Path("/boot").glob("vmlinuz-*")):
        return "libguestfs needs a kernel in /boot: install the Debian package linux-image-amd64"
    return None


def _configure(g: Any) -> None:
    """Pick the direct backend and TCG unless the environment says otherwise.

    KVM is unreliable on the machines pcloud is developed on (``/dev/kvm`` exists but guests
    abort), so software emulation is the safe default; ``LIBGUESTFS_BACKEND`` and
    ``LIBGUESTFS_BACKEND_SETTINGS`` override it.
    """
    if "LIBGUESTFS_BACKEND" not in os.environ:
        g.set_backend("direct")
    if "LIBGUESTFS_BACKEND_SETTINGS" not in os.environ:
        g.set_backend_settings(["force_tcg"])


@contextlib.contextmanager
def open_disk(path: Path, *, readonly: bool = False, fmt: str = "qcow2") -> Iterator[Any]:
    """Launch the appliance on one whole-disk ext4 image and mount it at ``/``.

    The JEOS images have no partition table, so the file system is ``/dev/sda``.
    """
    guestfs = load_guestfs()
    g = guestfs.GuestFS(python_return_dict=True)
    try:
        _configure(g)
        g.add_drive_opts(str(path), format=fmt, readonly=readonly)
        g.launch()
        if readonly:
            g.mount_ro("/dev/sda", "/")
        else:
            g.mount("/dev/sda", "/")
        yield g
        if not readonly:
            g.sync()
            g.umount_all()
            g.shutdown()
    finally:
        g.close()
