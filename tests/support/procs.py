"""What tests ask the kernel about their processes."""

from __future__ import annotations

import signal


def ignores_sigterm(pid: int) -> bool:
    """True when process ``pid`` has SIGTERM ignored (``SigIgn`` in /proc), i.e. it is
    ready for a test of stop escalation."""
    with open(f"/proc/{pid}/status") as f:
        mask = next(line for line in f if line.startswith("SigIgn:")).split()[1]
    return bool(int(mask, 16) & (1 << (signal.SIGTERM - 1)))
