"""Logging set-up shared by every pcloud command: one event per line on stderr.

Lines look like ``cped[1234]: INFO deployable dep1 started`` so that journald, a terminal
and ``grep`` all read them the same way; tracebacks are folded onto the event's line. When
stderr is a file (``cped.log``, ``dped.log``, ``agent.log``) each line starts with the date
and time to the millisecond, so an incident can be pieced together afterwards; journald
stamps lines itself and a terminal shows them live, so those get none.
"""

from __future__ import annotations

import logging
import os
import stat
import sys
from typing import TextIO

from pcloud.urls import mask_urls

_HANDLER_MARK = "_pcloud_handler"


class OneLineFormatter(logging.Formatter):
    """Fold multi-line messages and tracebacks into one line (`` | `` between lines); mask
    broker passwords wherever a URL appears."""

    def format(self, record: logging.LogRecord) -> str:
        return mask_urls(super().format(record).replace("\r", "").replace("\n", " | "))


def setup_logging(name: str, verbose: bool = False, level: int | str | None = None) -> None:
    """Send log records of this process to stderr as ``name[pid]: LEVEL message``.

    ``PCLOUD_LOG_LEVEL`` overrides the level (e.g. ``DEBUG``). Lines written to a file start
    with the wall-clock time to the millisecond; ``PCLOUD_LOG_TIME=1`` stamps them anywhere
    (to line up the logs of several processes, e.g. a soak's), ``PCLOUD_LOG_TIME=0``
    nowhere. Calling it again replaces the handler it installed before, so tests and CLIs
    may call it freely.
    """
    env = os.environ.get("PCLOUD_LOG_LEVEL")
    chosen = level or env or (logging.DEBUG if verbose else logging.INFO)
    if isinstance(chosen, str):
        chosen = logging.getLevelName(chosen.upper())
        if not isinstance(chosen, int):
            chosen = logging.INFO
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, _HANDLER_MARK, False):
            root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    setattr(handler, _HANDLER_MARK, True)
    stamp = "%(asctime)s.%(msecs)03d " if timestamped(os.environ.get("PCLOUD_LOG_TIME"),
                                                      sys.stderr) else ""
    handler.setFormatter(OneLineFormatter(f"{stamp}{name}[%(process)d]: %(levelname)s %(message)s",
                                          datefmt="%Y-%m-%d %H:%M:%S"))
    root.addHandler(handler)
    root.setLevel(chosen)
    # proton logs every reconnect attempt at INFO/ERROR; pcloud.bus reports outages itself.
    logging.getLogger("proton").setLevel(max(chosen, logging.WARNING))


def timestamped(setting: str | None, stream: TextIO) -> bool:
    """Whether log lines start with the time: ``setting`` (``PCLOUD_LOG_TIME``) ``1`` or
    ``0`` decides; unset, only when ``stream`` is a regular file (not a terminal, pipe or
    journald's socket)."""
    if setting in ("0", "1"):
        return setting == "1"
    try:
        return stat.S_ISREG(os.fstat(stream.fileno()).st_mode)
    except (OSError, ValueError, AttributeError):
        return False
