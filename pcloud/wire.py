"""The wire contract's shared vocabulary: what a name is, and the limits every party applies.

Names of deployables, assemblies and services become topic keys, CIB ids, broker user names
and file names, so one rule holds everywhere: 1-64 letters, digits, ``_`` or ``-``, not
starting with ``-`` (a lone ``-`` stands for "no such level" in topic keys, e.g. the DPE's
heartbeat ``pcloud.heartbeat.<dep>.-``).
"""

from __future__ import annotations

import re

NAME_PATTERN = r"[A-Za-z0-9_][A-Za-z0-9_-]{0,63}"
NAME = re.compile(rf"^{NAME_PATTERN}$")
MAX_TEXT = 4096


def is_name(value: object) -> bool:
    return isinstance(value, str) and NAME.fullmatch(value) is not None
