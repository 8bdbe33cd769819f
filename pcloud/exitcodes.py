"""Exit codes of pcloud's daemons, shared by the process that exits and the one that watches.

``dped`` exits with one of these; the CPE's supervisor reads them: ``EXIT_CONFIG`` means the
DPE can never start with this configuration (restarting it would only fail again), anything
else that is not ``EXIT_OK`` (``EXIT_FAILED``, ``EXIT_BUS``, a signal) is a crash and is
restarted with back-off.
"""

from __future__ import annotations

#: stopped as asked (``deployable_stop``, or a signal that leaves the deployable running)
EXIT_OK = 0
#: an unexpected failure; worth another try
EXIT_FAILED = 1
#: the configuration can never start: bad or unreadable deployable document, driver that
#: cannot be had, credentials that cannot get better. Not restarted until it changes.
EXIT_CONFIG = 2
#: the broker could not be used (may get better: restarted with back-off)
EXIT_BUS = 3

NAMES = {EXIT_OK: "ok", EXIT_FAILED: "failed", EXIT_CONFIG: "configuration error",
         EXIT_BUS: "bus error"}


def describe(code: int | None) -> str:
    """``exit 2 (configuration error)``, ``signal 9``, ``exit status unknown``."""
    if code is None:
        return "exit status unknown"
    if code < 0:
        return f"signal {-code}"
    name = NAMES.get(code)
    return f"exit {code} ({name})" if name else f"exit {code}"
