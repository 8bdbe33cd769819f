"""Durable, atomic file writes shared by the shell's catalogue and the daemons' state files.

A reader of a file written here sees the old or the new content, never a mix, and a crash
after the call returns cannot lose the new content (file and directory are fsynced).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


def write_atomic(path: Path, text: str, mode: int = 0o644) -> None:
    """Write a file so that readers see the old or the new content, never a mix.

    The temporary file has a name of its own per call (two threads of one process may write
    the same file at once: the last rename wins, neither fails), and it is created 0600, so a
    file written with ``mode=0o600`` is never readable by others, not even for a moment."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def write_json_atomic(path: Path, data: Any) -> None:
    """:func:`write_atomic` of data as indented JSON with sorted keys (stable, diffable)."""
    write_atomic(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def write_private(path: Path, text: str) -> None:
    """:func:`write_atomic` of a file only its owner may read (credentials, settings)."""
    write_atomic(path, text, mode=0o600)


def private_dir(path: Path) -> Path:
    """Create ``path`` (and parents) and make it 0700: state directories hold secrets."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    return path
