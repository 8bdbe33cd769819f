"""Reconnect policy helpers: back-off, which failures are final, and safe URLs for logs."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from proton.reactor import Backoff

from pcloud.urls import mask_url

RECONNECT_CAP = 0.5   # seconds between reconnect attempts once the back-off has grown


class ResettingBackoff(Backoff):
    """Capped exponential back-off that starts again from zero after each success.

    proton's own ``Backoff`` hands out one shared iterator, so after a first outage every
    later one would start at the maximum delay.

    The cap is what a client adds, on average half of it, to the broker's own start before
    it is back: with 2 s a soak's clients came back 0.9 s after a restarted node listened,
    all of them at once (they had lost it at once). An attempt while the broker is down is
    a refused TCP connect; one to a broker that does not answer (frozen, unreachable) lasts
    until it fails, whatever the cap: a short cap costs next to nothing.
    """

    def __init__(self, initial: float = 0.1, factor: float = 2.0,
                 max_delay: float = RECONNECT_CAP) -> None:
        super().__init__(initial=initial, factor=factor, max_delay=max_delay)

    def __iter__(self) -> Iterator[float]:
        yield 0.0
        yield from capped_doubling(self.kwargs["initial"], self.kwargs["max_delay"],
                                   self.kwargs["factor"])


def capped_doubling(first: float, cap: float, factor: float = 2.0) -> Iterator[float]:
    """``first``, then ``factor`` times the last, never above ``cap``; forever."""
    delay = first
    while True:
        yield delay
        delay = min(cap, delay * factor)


def fatal_at_start(cond: Any) -> bool:
    """Bad credentials or an untrusted certificate: retrying cannot help, fail start()."""
    text = cond.description or ""
    return (cond.name == "amqp:unauthorized-access" or "SASL" in text
            or "certificate verify failed" in text)


def redact(url: str) -> str:
    """The URL without its password, for logs and error messages."""
    return mask_url(url)
