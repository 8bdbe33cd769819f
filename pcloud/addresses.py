"""An assembly's IP addresses as carried on the wire: the ``addresses`` attribute of a guest
agent's heartbeat (issue 15), and of the assembly in ``deployable_status``.

The value is the space-separated set of the assembly's IPv4 and IPv6 addresses, each in its
canonical text form, sorted, at most ``MAX_ADDRESSES``; ``""`` is an assembly with none. Both
ends build and read it here, so a set compares equal however its sender listed it.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

MAX_ADDRESSES = 32
MAX_TEXT = MAX_ADDRESSES * 40      # the longest canonical IPv6 text is 39 characters


class AddressError(ValueError):
    """An ``addresses`` value that is not a set of IP addresses; the message says why."""


def canonical(addresses: Iterable[str]) -> tuple[str, ...]:
    """The sorted, de-duplicated canonical forms of ``addresses`` (AddressError if any is not
    an IPv4 or IPv6 address, or there are more than ``MAX_ADDRESSES``)."""
    found = set()
    for text in addresses:
        try:
            found.add(ipaddress.ip_address(text))
        except ValueError:
            raise AddressError(f"{text[:64]!r} is not an IPv4 or IPv6 address") from None
    if len(found) > MAX_ADDRESSES:
        raise AddressError(f"{len(found)} addresses, more than the limit of {MAX_ADDRESSES}")
    return tuple(str(a) for a in sorted(found, key=lambda a: (a.version, a)))


def parse(text: str) -> tuple[str, ...]:
    """Read an ``addresses`` attribute (AddressError when it is not one)."""
    if len(text) > MAX_TEXT:
        raise AddressError(f"addresses is {len(text)} characters, more than {MAX_TEXT}")
    return canonical(text.split())


def format_addresses(addresses: Iterable[str]) -> str:
    """The attribute value of a set of addresses (canonical, sorted)."""
    return " ".join(canonical(addresses))
