"""A guest agent's heartbeat, read with a strict check of its few attributes instead of a
RelaxNG run (issue 13: the schema took 29 % of a DPE's time at 200 assemblies).

The check accepts no more than ``schemas/heartbeat.rng`` does: the same attributes and
datatypes, no others, no children, no text. A document it refuses is not necessarily
invalid; the caller then runs the full schema, whose message names the fault. Pure: the
document is already parsed by :mod:`pcloud.xmlsafe`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from lxml import etree

from pcloud import addresses as addrs
from pcloud.states import DeployableState
from pcloud.wire import NAME

_TIME = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?(Z|[+\-]\d{2}:\d{2})")
_UUID = re.compile(r"\S{1,64}")
_UINT = re.compile(r"\+?\d{1,20}")
_DECIMAL = re.compile(r"\+?(\d{1,12}(\.\d{0,9})?|\.\d{1,9})")
_DIGEST = re.compile(r"[0-9a-f]{32}")
_STATES = frozenset(s.value for s in DeployableState)
REQUIRED = frozenset({"deployable", "seq", "started", "interval", "time"})
OPTIONAL = frozenset({"assembly", "uuid", "digest", "pid", "state", "addresses"})


class HeartbeatError(ValueError):
    """Not a heartbeat this check accepts (the full schema says why)."""


@dataclass(frozen=True)
class Heartbeat:
    """What the DPE reads in a heartbeat; ``addresses`` None: not carried (unchanged)."""

    deployable: str
    assembly: str | None
    uuid: str | None
    seq: int
    started: str
    interval: float
    time: str
    digest: str | None = None
    pid: int | None = None
    addresses: tuple[str, ...] | None = None


def read(root: etree._Element) -> Heartbeat:
    """The heartbeat in ``root``, or HeartbeatError."""
    if root.tag != "heartbeat" or len(root) or (root.text and root.text.strip()):
        raise HeartbeatError("not an empty <heartbeat> element")
    attrs = dict(root.attrib)
    names = attrs.keys()
    if not REQUIRED <= names or not names <= REQUIRED | OPTIONAL:
        raise HeartbeatError(f"attributes {sorted(names)} are not a heartbeat's")
    assembly = attrs.get("assembly")
    _match(NAME, attrs["deployable"], "deployable")
    if assembly is not None and assembly != "-":
        _match(NAME, assembly, "assembly")
    for name, pattern in (("uuid", _UUID), ("digest", _DIGEST), ("pid", _UINT)):
        if name in attrs:
            _match(pattern, attrs[name], name)
    _match(_UINT, attrs["seq"], "seq")
    _match(_TIME, attrs["started"], "started")
    _match(_TIME, attrs["time"], "time")
    _match(_DECIMAL, attrs["interval"], "interval")
    interval = float(attrs["interval"])
    if interval <= 0:
        raise HeartbeatError("interval is not positive")
    if "state" in attrs and attrs["state"] not in _STATES:
        raise HeartbeatError("state is not a deployable state")
    try:
        addresses = addrs.parse(attrs["addresses"]) if "addresses" in attrs else None
    except addrs.AddressError as exc:
        raise HeartbeatError(f"addresses: {exc}") from None
    return Heartbeat(attrs["deployable"], assembly, attrs.get("uuid"), int(attrs["seq"]),
                     attrs["started"], interval, attrs["time"], attrs.get("digest"),
                     int(attrs["pid"]) if "pid" in attrs else None, addresses)


def _match(pattern: re.Pattern[str], value: str, name: str) -> None:
    if pattern.fullmatch(value) is None:
        raise HeartbeatError(f"{name} {value[:64]!r} is malformed")
