"""Letting one other user through private directories: a POSIX ACL entry, nothing wider.

pcloud's state directories are 0700 (they hold secrets). A VM under the host's libvirtd runs
QEMU as an unprivileged user (Debian: ``libvirt-qemu``), which must reach the boot files in
them; libvirt relabels the files themselves, never the folders on their path. So each such
folder gets a named-user ACL entry with search permission only (``u:libvirt-qemu:--x``): that
user can open a file whose name it is given, and can list or read nothing else. The ACL is
read, extended and written back as the kernel's ``system.posix_acl_access`` attribute
(``acl_ea.h``), so no ``setfacl`` is needed.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

XATTR = "system.posix_acl_access"
VERSION = 2
USER_OBJ, USER, GROUP_OBJ, GROUP, MASK, OTHER = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20
UNDEFINED_ID = 0xFFFFFFFF
SEARCH = 0o1
_ENTRY = struct.Struct("<HHI")


class AclError(OSError):
    """The file system keeps no POSIX ACLs, or this process may not set them."""


def _entries(path: Path, mode: int) -> dict[tuple[int, int], int]:
    """The folder's ACL as {(tag, id): perms}; the mode's three classes if it has none."""
    try:
        raw = os.getxattr(path, XATTR)
    except OSError:
        raw = b""
    if len(raw) >= 4 and struct.unpack_from("<I", raw)[0] == VERSION:
        return {(tag, ident): perm for tag, perm, ident in _ENTRY.iter_unpack(raw[4:])}
    return {(USER_OBJ, UNDEFINED_ID): (mode >> 6) & 7, (GROUP_OBJ, UNDEFINED_ID): (mode >> 3) & 7,
            (OTHER, UNDEFINED_ID): mode & 7}


def allow_search(path: Path, uid: int) -> bool:
    """Give ``uid`` search permission on the folder ``path`` (if it lacks it); True if the
    ACL changed. Raises AclError when the file system cannot keep it."""
    info = os.stat(path)
    if info.st_uid == uid or info.st_mode & SEARCH:
        return False                      # its owner, or everyone may pass already
    entries = _entries(path, info.st_mode)
    key = (USER, uid)
    if entries.get(key, 0) & SEARCH and entries.get((MASK, UNDEFINED_ID), 7) & SEARCH:
        return False
    entries[key] = entries.get(key, 0) | SEARCH
    entries[(MASK, UNDEFINED_ID)] = entries.get((MASK, UNDEFINED_ID), 0) | SEARCH | (
        (info.st_mode >> 3) & 7)
    raw = struct.pack("<I", VERSION) + b"".join(
        _ENTRY.pack(tag, perm, ident) for (tag, ident), perm in sorted(entries.items()))
    try:
        os.setxattr(path, XATTR, raw)
    except OSError as exc:
        raise AclError(exc.errno, f"cannot let uid {uid} through {path}: {exc.strerror} "
                                  "(a file system without POSIX ACLs?)") from None
    return True


def allow_search_to(target: Path, uid: int) -> list[Path]:
    """Let ``uid`` through every folder on the way to ``target``; returns those changed."""
    changed = []
    for folder in reversed(Path(target).resolve().parents):
        if allow_search(folder, uid):
            changed.append(folder)
    return changed
