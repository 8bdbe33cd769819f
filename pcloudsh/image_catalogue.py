"""Where images live in the catalogue, and how a build is staged beside them.

Layout under a catalogue directory::

    jeos/<name>/disk.qcow2  vmlinux (or vmlinuz)  initrd.img  jeos.json
    assemblies/<name>/disk.qcow2 (qcow2 overlay on its JEOS)  assembly.json

Every build happens in a hidden folder beside its destination (:func:`build_dir`) and is
renamed into place at the end (:func:`publish`), so a failed or interrupted build never leaves
a half-made image in the catalogue. Deletion renames out of sight first, for the same reason.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pcloud.image_layout import ASSEMBLY_META, DISK_NAME

Progress = Callable[[str], None]

JEOS_META = "jeos.json"
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$")


class ImageError(Exception):
    """An image operation failed; the message says what and why."""


class ImageExistsError(ImageError):
    """The image to create is already in the catalogue."""


class ImageNotFoundError(ImageError):
    """The image named is not in the catalogue."""


@dataclass(frozen=True)
class Image:
    """A JEOS or assembly image in the catalogue: its folder and its metadata."""

    name: str
    path: Path
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def disk(self) -> Path:
        return self.path / self.meta.get("disk", DISK_NAME)


class Steps:
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


def check_name(name: str, what: str) -> None:
    """Refuse a name that cannot be a catalogue folder (ImageError)."""
    if not NAME_RE.match(name):
        raise ImageError(f"{what} name {name!r} is not valid: use letters, digits, '_' and '-'")


def run_tool(cmd: list[str], steps: Steps, show: Callable[[str], bool] | None = None,
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


def _unmount_below(root: Path) -> None:
    """Unmount what an interrupted debootstrap left mounted inside ``root`` (deepest first)."""
    prefix = str(root.resolve()) + "/"
    with open("/proc/self/mounts") as mounts:
        points = [line.split()[1] for line in mounts if line.split()[1].startswith(prefix)]
    for point in sorted(points, key=len, reverse=True):
        subprocess.run(["umount", "-l", point], check=False)


def remove_tree(path: Path) -> None:
    """Remove a build folder, unmounting first so rm never crosses into a host mount."""
    if path.exists():
        _unmount_below(path)
        subprocess.run(["rm", "-rf", "--one-file-system", str(path)], check=False)


def publish(build: Path, dest: Path, meta_name: str, meta: dict[str, Any], steps: Steps,
            label: str) -> Image:
    """Write a finished build's metadata and move it into place as the image ``dest``.

    The rename is the one step that makes the image appear: the catalogue never shows a
    partial image.
    """
    (build / meta_name).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    build.chmod(0o755)
    try:
        os.rename(build, dest)
    except OSError as exc:
        if dest.exists():
            raise ImageExistsError(f"{dest} appeared while building") from exc
        raise ImageError(f"cannot move {build} to {dest}: {exc}") from exc
    steps.say(f"{label} ready in {dest}")
    return Image(dest.name, dest, meta)


def build_dir(parent: Path) -> Path:
    """A fresh hidden folder beside the destination (listings skip dot folders)."""
    parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=".build-", dir=parent))


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


def _find(images: list[Image], name: str, missing: str) -> Image:
    """The image called ``name``; ImageNotFoundError(missing) when there is none."""
    for image in images:
        if image.name == name:
            return image
    raise ImageNotFoundError(missing)


def jeos_get(name: str, catalogue_dir: str | Path) -> Image:
    """One JEOS image; ImageNotFoundError if it is not in the catalogue."""
    return _find(jeos_list(catalogue_dir), name,
                 f"JEOS {name!r} not found in {Path(catalogue_dir) / 'jeos'}")


def discard(path: Path) -> None:
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
    discard(image.path)


def assembly_list(catalogue_dir: str | Path) -> list[Image]:
    """The assembly images in the catalogue, by name."""
    return _list(Path(catalogue_dir) / "assemblies", ASSEMBLY_META)


def assembly_get(name: str, catalogue_dir: str | Path) -> Image:
    """One assembly image; ImageNotFoundError if it is not in the catalogue."""
    return _find(assembly_list(catalogue_dir), name,
                 f"assembly {name!r} not found in {Path(catalogue_dir) / 'assemblies'}")


def assembly_delete(name: str, catalogue_dir: str | Path) -> None:
    """Delete an assembly image (its overlay and metadata); its JEOS stays."""
    discard(assembly_get(name, catalogue_dir).path)
