"""Logging set-up shared by every pcloud command: one event per line on stderr.

Lines look like ``cped[1234]: INFO deployable dep1 started`` so that journald, a terminal
and ``grep`` all read them the same way; tracebacks are folded onto the event's line.
"""

from __future__ import annotations

import logging
import os
import sys

from pcloud.urls import mask_urls

_HANDLER_MARK = "_pcloud_handler"


class OneLineFormatter(logging.Formatter):
    """Fold multi-line messages and tracebacks into one line (`` | `` between lines); mask
    broker passwords wherever a URL appears."""

    def format(self, record: logging.LogRecord) -> str:
        return mask_urls(super().format(record).replace("\r", "").replace("\n", " | "))


def setup_logging(name: str, verbose: bool = False, level: int | str | None = None) -> None:
    """Send log records of this process to stderr as ``name[pid]: LEVEL message``.

    ``PCLOUD_LOG_LEVEL`` overrides the level (e.g. ``DEBUG``); ``PCLOUD_LOG_TIME=1`` starts
    each line with the wall-clock time to the millisecond (to line up the logs of several
    processes, e.g. a soak's). Calling it again replaces the handler it installed before, so
    tests and CLIs may call it freely.
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
    stamp = "%(asctime)s.%(msecs)03d " if os.environ.get("PCLOUD_LOG_TIME") == "1" else ""
    handler.setFormatter(OneLineFormatter(f"{stamp}{name}[%(process)d]: %(levelname)s %(message)s",
                                          datefmt="%H:%M:%S"))
    root.addHandler(handler)
    root.setLevel(chosen)
    # proton logs every reconnect attempt at INFO/ERROR; pcloud.bus reports outages itself.
    logging.getLogger("proton").setLevel(max(chosen, logging.WARNING))
