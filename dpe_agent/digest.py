"""Operation digests, computed the way Pacemaker 2.1.5 computes them.

Pacemaker compares the ``op-digest`` recorded with an operation against the digest of the
resource's current parameters; a mismatch means "definition changed" and restarts the
resource. A digest that differs by one escaped character therefore restarts a healthy
service, so the string built here follows Pacemaker's serializer byte for byte, including
its quirks (see docs/reference: TAB as four spaces, newline as a literal ``\\n``, no escaping
after the first non-ASCII character of a value).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from functools import lru_cache

DEFAULT_OP_TIMEOUT_MS = 20000

_ESCAPES = {
    "&": "&amp;",
    "<": "&lt;",
    ">": "&gt;",
    '"': "&quot;",
    "'": "&apos;",
    "\t": "    ",
    "\n": "\\n",
}


_TABLE = str.maketrans(_ESCAPES)


def escape_value(value: str) -> str:
    """Escape one attribute value as Pacemaker 2.1.5 does when it serializes for a digest."""
    if value.isascii():
        return value.translate(_TABLE)
    out: list[str] = []
    for index, char in enumerate(value):
        if ord(char) > 127:
            # Pacemaker 2.1.5 copies the rest of the value verbatim after a non-ASCII byte.
            out.append(value[index:])
            break
        out.append(_ESCAPES.get(char, char))
    return "".join(out)


def digest_string(params: Mapping[str, str]) -> str:
    """The exact text Pacemaker hashes: a childless ``parameters`` element, sorted."""
    attrs = "".join(f' {name}="{escape_value(params[name])}"' for name in sorted(params))
    return f" <parameters{attrs}/>\n"


def op_digest(params: Mapping[str, str], *, interval_ms: int = 0,
              timeout_ms: int = DEFAULT_OP_TIMEOUT_MS) -> str:
    """MD5 hex digest of an operation's parameters.

    A recurring operation (``interval_ms > 0``) also covers its timeout, because Pacemaker
    keeps ``CRM_meta_timeout`` among the parameters of recurring ops.
    """
    items = tuple(params.items())
    if interval_ms > 0:
        items += (("CRM_meta_timeout", str(timeout_ms)),)
    return _cached_digest(items)


@lru_cache(maxsize=65536)
def _cached_digest(items: tuple[tuple[str, str], ...]) -> str:
    # Schedulers ask for the same resource's digest several times per run.
    return hashlib.md5(digest_string(dict(items)).encode("utf-8")).hexdigest()
