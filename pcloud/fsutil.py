"""Durable, atomic file writes shared by the shell's catalogue and the daemons' state files.

A reader of a file written here sees the old or the new content, never a mix, and a crash
after the call returns cannot lose the new content (file and directory are fsynced).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def write_atomic(path: Path, text: str) -> None:
    """Write a file so that readers see the old or the new content, never a mix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def write_json_atomic(path: Path, data: Any) -> None:
    """:func:`write_atomic` of data as indented JSON with sorted keys (stable, diffable)."""
    write_atomic(path, json.dumps(data, indent=2, sort_keys=True) + "\n")
