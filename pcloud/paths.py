"""Where pcloud finds its data files (schemas, XSLT, templates, examples, unit files).

A source checkout or editable install reads them from the top of the tree; an installed
wheel reads them from ``<data>/share/pcloud``, where setup.cfg's data_files puts them: the
data path of whichever install scheme pip used (a virtualenv, ``/usr/local`` on Debian, or
``~/.local`` for ``--user``).
"""

from __future__ import annotations

import site
import sys
import sysconfig
from pathlib import Path

_SOURCE_ROOT = Path(__file__).resolve().parent.parent


def _installed_roots() -> list[Path]:
    """Every place an install scheme may have put ``share/pcloud``, most likely first."""
    bases = [sys.prefix, sysconfig.get_path("data")]
    for scheme in ("posix_local", "posix_prefix", "posix_user"):
        if scheme in sysconfig.get_scheme_names():
            bases.append(sysconfig.get_path("data", scheme))
    bases.append(site.USER_BASE or "")
    roots: list[Path] = []
    for base in filter(None, bases):
        root = Path(base) / "share" / "pcloud"
        if root not in roots:
            roots.append(root)
    return roots


# Computed once, at import (under the import lock): sysconfig is not thread-safe on first use.
_ROOTS = [_SOURCE_ROOT, *_installed_roots()]


def data_dir(kind: str) -> Path:
    """Return the directory of one kind of data: ``schemas``, ``xml`` or ``init``."""
    roots = _ROOTS
    for root in roots:
        candidate = root / kind
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"pcloud data directory {kind!r} not found under "
                            f"{', '.join(map(str, roots))}")


def data_file(kind: str, name: str) -> Path:
    """Return one data file, e.g. ``data_file("schemas", "deployable.rng")``."""
    path = data_dir(kind) / name
    if not path.is_file():
        raise FileNotFoundError(f"pcloud data file {path} is missing")
    return path
