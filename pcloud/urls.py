"""Masking broker passwords: the one helper every message and log line goes through.

Broker URLs carry credentials (``amqp://user:password@host:port``); an operator pastes error
messages and logs into tickets, so no pcloud text ever shows the password.
"""

from __future__ import annotations

import re

# scheme://user:password@ — the password is anything up to the last "@" before the host.
_CREDENTIALS = re.compile(r"(?P<head>\b[a-zA-Z][a-zA-Z0-9+.-]*://[^:/@\s'\"]*):"
                          r"(?P<password>[^\s'\"]*)@(?=[^@\s'\"]*(?:[\s'\"]|$))")


def mask_url(url: str) -> str:
    """The URL with its password replaced by ``***`` (unchanged when it has none)."""
    return mask_urls(url)


def mask_urls(text: str) -> str:
    """Every URL inside ``text`` with its password masked."""
    if "://" not in text or "@" not in text:
        return text
    return _CREDENTIALS.sub(lambda m: f"{m.group('head')}:***@", text)
