"""``<heartbeat>``: a guest agent's (``pcloud.heartbeat.<dep>.<asm>``) or a DPE's (assembly
``-``) sign of life, read with a strict check of its few attributes instead of a RelaxNG run
(issue 13: the schema took 29 % of a DPE's time at 200 assemblies).

The check accepts no more than ``schemas/heartbeat.rng`` does: the same attributes and
datatypes, no others, no children, no text. A document it refuses is not necessarily
invalid; the caller then runs the full schema, whose message names the fault. Pure: the
document is already parsed by :mod:`pcloud.xmlsafe`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from lxml import etree

from pcloud import addresses as addrs
from pcloud.states import DeployableState
from pcloud.wire import NAME
from pcloud.wire.check import WireError

TAG = "heartbeat"
_TIME = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?(Z|[+\-]\d{2}:\d{2})")
_UUID = re.compile(r"\S{1,64}")
_UINT = re.compile(r"\+?\d{1,20}")
_DECIMAL = re.compile(r"\+?(\d{1,12}(\.\d{0,9})?|\.\d{1,9})")
_DIGEST = re.compile(r"[0-9a-f]{32}")
_STATES = frozenset(s.value for s in DeployableState)
REQUIRED = frozenset({"deployable", "seq", "started", "interval", "time"})
OPTIONAL = frozenset({"assembly", "uuid", "digest", "pid", "state", "addresses"})


class HeartbeatError(WireError):
    """Not a heartbeat this check accepts (the full schema says why)."""


@dataclass(frozen=True)
class Heartbeat:
    """One beat. ``assembly`` ``-``: a DPE's, which carries its deployable's ``state``;
    ``addresses`` None: not carried (unchanged since the last beat that had them)."""

    deployable: str
    seq: int
    started: str
    interval: float
    time: str
    assembly: str | None = None
    uuid: str | None = None
    digest: str | None = None
    pid: int | None = None
    addresses: tuple[str, ...] | None = None
    state: str | None = None

    @classmethod
    def from_xml(cls, root: etree._Element) -> Heartbeat:
        """The heartbeat in ``root``, or HeartbeatError (the DPE's bus thread reads every
        beat of every assembly here: keep it a dict look-up and a few regexes)."""
        if root.tag != TAG or len(root) or (root.text and root.text.strip()):
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
        state = attrs.get("state")
        if state is not None and state not in _STATES:
            raise HeartbeatError("state is not a deployable state")
        try:
            addresses = addrs.parse(attrs["addresses"]) if "addresses" in attrs else None
        except addrs.AddressError as exc:
            raise HeartbeatError(f"addresses: {exc}") from None
        return cls(attrs["deployable"], int(attrs["seq"]), attrs["started"], interval,
                   attrs["time"], assembly, attrs.get("uuid"), attrs.get("digest"),
                   int(attrs["pid"]) if "pid" in attrs else None, addresses, state)

    def to_xml(self) -> etree._Element:
        """The ``<heartbeat>`` element (a DPE's beat: one a second, an element is cheap
        enough; a guest agent's beats go through :class:`HeartbeatText`)."""
        elem = etree.Element(TAG, deployable=self.deployable)
        optional = {"assembly": self.assembly, "uuid": self.uuid, "seq": str(self.seq),
                    "started": self.started, "interval": f"{self.interval:g}",
                    "digest": self.digest, "time": self.time,
                    "pid": None if self.pid is None else str(self.pid),
                    "addresses": (None if self.addresses is None
                                  else addrs.format_addresses(self.addresses)),
                    "state": self.state}
        for name, value in optional.items():
            if value is not None:
                elem.set(name, value)
        return elem


@dataclass(frozen=True)
class HeartbeatText:
    """A guest agent's beats as text: its fixed attributes (deployable, assembly, uuid,
    started, pid) escaped once, each beat appends its few safe values. Beating is an idle
    agent's main cost, so no element is built per beat."""

    head: str

    @classmethod
    def fixed(cls, attrs: Mapping[str, str]) -> HeartbeatText:
        head = etree.tostring(etree.Element(TAG, dict(attrs)), encoding="unicode")
        return cls(head.removesuffix("/>").rstrip())

    def beat(self, seq: int, interval: float, digest: str, time: str,
             addresses: str | None = None) -> str:
        """One beat's document; ``addresses`` already formatted by
        :func:`pcloud.addresses.format_addresses`, None to leave them out."""
        return (f'{self.head} seq="{seq}" interval="{interval:g}" digest="{digest}" '
                f'time="{time}"' + ("" if addresses is None else f' addresses="{addresses}"')
                + "/>")


def _match(pattern: re.Pattern[str], value: str, name: str) -> None:
    if pattern.fullmatch(value) is None:
        raise HeartbeatError(f"{name} {value[:64]!r} is malformed")
