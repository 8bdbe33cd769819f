"""What ``/proc`` says of a process and of the host: alive, CPU used, starved.

Shared by the CPE's supervisor (its DPEs) and the DPE (its sandboxes, its own judgement of
silence), so both read a process the same way.
"""

from __future__ import annotations

import os
from pathlib import Path

OVERLOAD = 2.0      # runnable tasks per core (1-minute load) that mean a starved host


def fields(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name (state is [0], ppid [1],
    utime [11], stime [12], starttime [19]); None when there is no such process."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
    except OSError:
        return None
    head, paren, rest = text.rpartition(")")
    return rest.split() if paren else None


def alive(pid: int) -> bool:
    """The process exists and is not a zombie."""
    found = fields(pid)
    return bool(found) and found[0] not in ("Z", "X")


def cpu_ticks(pid: int) -> int | None:
    """User plus system CPU time of the process, in clock ticks."""
    found = fields(pid)
    return int(found[11]) + int(found[12]) if found and len(found) > 12 else None


def host_overloaded() -> bool:
    """The host is visibly starved: its 1-minute load is over ``OVERLOAD`` per core."""
    try:
        return os.getloadavg()[0] > OVERLOAD * (os.cpu_count() or 1)
    except OSError:
        return False
