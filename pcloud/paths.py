"""Where pcloud finds its data files (schemas, XSLT, templates, examples, unit files).

A source checkout or editable install reads them from the top of the tree; an installed
wheel reads them from ``<prefix>/share/pcloud``, where setup.cfg's data_files puts them.
"""

from __future__ import annotations

import sys
from pathlib import Path

_SOURCE_ROOT = Path(__file__).resolve().parent.parent
_INSTALLED_ROOT = Path(sys.prefix) / "share" / "pcloud"


def data_dir(kind: str) -> Path:
    """Return the directory of one kind of data: ``schemas``, ``xml`` or ``init``."""
    for root in (_SOURCE_ROOT, _INSTALLED_ROOT):
        candidate = root / kind
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"pcloud data directory {kind!r} not found under "
                            f"{_SOURCE_ROOT} or {_INSTALLED_ROOT}")


def data_file(kind: str, name: str) -> Path:
    """Return one data file, e.g. ``data_file("schemas", "deployable.rng")``."""
    path = data_dir(kind) / name
    if not path.is_file():
        raise FileNotFoundError(f"pcloud data file {path} is missing")
    return path
