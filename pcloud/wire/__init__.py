"""The wire contract's shared vocabulary: what a name is, and the limits every party applies.

Names of deployables, assemblies and services become topic keys, CIB ids, broker user names
and file names, so one rule holds everywhere: 1-64 letters, digits, ``_`` or ``-``, not
starting with ``-`` (a lone ``-`` stands for "no such level" in topic keys, e.g. the DPE's
heartbeat ``pcloud.heartbeat.<dep>.-``).

The internal messages (heartbeats, resource operations and their results, reports, agent
info) are dataclasses in this package's modules, each with ``to_xml`` and a strict
``from_xml`` (:mod:`pcloud.wire.check`): no party writes or reads their XML by hand. This
module stays light (standard library only) for the many that need a name or a time.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

NAME_PATTERN = r"[A-Za-z0-9_][A-Za-z0-9_-]{0,63}"
NAME = re.compile(rf"^{NAME_PATTERN}$")
MAX_TEXT = 4096


def is_name(value: object) -> bool:
    return isinstance(value, str) and NAME.fullmatch(value) is not None


def format_time(when: datetime) -> str:
    """The one time format on the wire: ISO 8601 in UTC with milliseconds and ``Z``
    (``2026-11-21T10:00:00.123Z``); a naive ``when`` is taken as UTC."""
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    when = when.astimezone(UTC)
    return when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z"


def format_epoch(epoch: float) -> str:
    """``format_time`` of a ``time.time()`` value."""
    return format_time(datetime.fromtimestamp(epoch, UTC))


def now() -> str:
    """The current time in the wire format."""
    return format_time(datetime.now(UTC))


def parse_time(text: str) -> datetime:
    """Parse an ISO 8601 time (``Z`` or offset) into an aware UTC datetime."""
    value = datetime.fromisoformat(text.replace("Z", "+00:00") if text.endswith("Z") else text)
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC)
