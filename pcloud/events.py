"""pcloud events: what operators see on ``pcloud.event.<dep>.<asm>.<rsc>`` (DESIGN §3).

An incident's timing (``detected_at``, ``recovered_at``, ``duration_ms``, ``incident``) rides
on the state-change event that closes it, so one event tells the whole story of a recovery.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from lxml import etree

from pcloud import schemas, xmlsafe
from pcloud.wire import MAX_TEXT, format_time, parse_time


class EventType(StrEnum):
    DEPLOYABLE_STATE_CHANGE = "deployable_state_change"
    ASSEMBLY_STATE_CHANGE = "assembly_state_change"
    RESOURCE_STATE_CHANGE = "resource_state_change"
    #: a failure count crossed escalation_failures: ``escalated_to`` names the level restarted
    ESCALATION = "escalation"
    #: a document or request was refused; ``reason`` says why
    CONFIG_ERROR = "config_error"
    #: an assembly was forcibly powered off before being started again
    FENCING = "fencing"
    #: a new deployable document was applied by deployable_reload
    CONFIG_RELOAD = "config_reload"
    #: an assembly's IP addresses changed (``old``, ``new``)
    ASSEMBLY_ADDRESS_CHANGE = "assembly_address_change"
    #: an operator hook ran on an event (cpe_agent/hooks.py): ``hook``, ``exit_status``
    HOOK_RESULT = "hook_result"


#: Attributes with a field of their own; everything else goes to ``Event.extra``.
_FIELDS = ("seq", "time", "type", "deployable", "assembly", "resource", "state", "reason")


#: Extra attributes with a structured type of their own: never truncated.
_STRUCTURED = frozenset({"previous", "detected_at", "recovered_at", "duration_ms", "incident",
                         "escalated_to"})
#: Largest seq SQLite can store (a signed 64-bit integer): ``since_seq`` is clamped to it.
MAX_SEQ = 2**63 - 1


def bounded_text(text: str, limit: int = MAX_TEXT) -> str:
    """``text`` cut to ``limit`` characters, ending with an ellipsis when it was cut."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _now() -> datetime:
    return datetime.now(UTC)


def _as_text(value: Any) -> str:
    if isinstance(value, datetime):
        return format_time(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.3f}".rstrip("0").rstrip(".") if value != int(value) else str(int(value))
    if isinstance(value, StrEnum):
        return value.value
    return str(value)


@dataclass(frozen=True, init=False)
class Event:
    """One event. ``seq`` is None until the DPE numbers it; ``time`` is UTC, ms precision.

    ``extra`` holds further attributes (``previous``, ``detected_at``, ``recovered_at``,
    ``duration_ms``, ``incident``, ``escalated_to``, ...) as strings, the way they travel.
    """

    seq: int | None
    time: datetime
    type: EventType
    deployable: str
    assembly: str | None = None
    resource: str | None = None
    state: str | None = None
    reason: str | None = None
    extra: dict[str, str] = field(default_factory=dict, hash=False)

    def __init__(self, seq: int | None, time: datetime | str | None, type: EventType | str,
                 deployable: str, assembly: str | None = None, resource: str | None = None,
                 state: str | None = None, reason: str | None = None, **extra: Any) -> None:
        if time is None:
            time = _now()
        elif isinstance(time, str):
            time = parse_time(time)
        elif time.tzinfo is None:
            time = time.replace(tzinfo=UTC)
        # Keep what travels: milliseconds, so from_xml(to_xml()) compares equal.
        time = time.astimezone(UTC).replace(microsecond=time.microsecond // 1000 * 1000)
        set_ = object.__setattr__
        set_(self, "seq", None if seq is None else int(seq))
        set_(self, "time", time)
        set_(self, "type", EventType(type))
        set_(self, "deployable", deployable)
        set_(self, "assembly", assembly or None)
        set_(self, "resource", resource or None)
        set_(self, "state", None if state is None else _as_text(state))
        # Free text is bounded here, where every event is built: a receiver validating
        # against the schema would otherwise drop an over-long event for good (a seq gap).
        set_(self, "reason", None if reason is None else bounded_text(str(reason)))
        set_(self, "extra", {k: _as_text(v) if k in _STRUCTURED else bounded_text(_as_text(v))
                             for k, v in extra.items() if v is not None})

    def with_seq(self, seq: int, time: datetime | None = None) -> Event:
        """The same event numbered (and stamped) by the DPE."""
        return Event(seq, time or self.time, self.type, self.deployable, self.assembly,
                     self.resource, self.state, self.reason, **self.extra)

    def topic_key(self) -> str:
        """``pcloud.event.<dep>.<asm|->.<rsc|->``, the topic it is published on."""
        return f"pcloud.event.{self.deployable}.{self.assembly or '-'}.{self.resource or '-'}"

    def to_element(self) -> etree._Element:
        element = etree.Element("event")
        if self.seq is not None:
            element.set("seq", str(self.seq))
        element.set("time", format_time(self.time))
        element.set("type", self.type.value)
        element.set("deployable", self.deployable)
        for name in ("assembly", "resource", "state", "reason"):
            value = getattr(self, name)
            if value is not None:
                element.set(name, value)
        for name, value in self.extra.items():
            element.set(name, value)
        return element

    def to_xml(self) -> str:
        return etree.tostring(self.to_element(), encoding="unicode")

    @classmethod
    def from_xml(cls, root_or_text: etree._Element | str | bytes,
                 source: str | None = None) -> Event:
        """Read an ``<event>``, validated against its schema (XMLError otherwise)."""
        if isinstance(root_or_text, str | bytes):
            root = xmlsafe.parse(root_or_text, source=source)
        else:
            root = root_or_text
        schemas.validate(root, "event" if "seq" in root.attrib else "event_raise", source)
        attrs = dict(root.attrib)
        extra = {k: v for k, v in attrs.items() if k not in _FIELDS}
        return cls(attrs.get("seq"), attrs.get("time"), attrs["type"], attrs["deployable"],
                   attrs.get("assembly"), attrs.get("resource"), attrs.get("state"),
                   attrs.get("reason"), **extra)

    def path(self) -> str:
        """``dep1/web/httpd``: the component the event is about."""
        return "/".join(p for p in (self.deployable, self.assembly, self.resource) if p)

    def describe(self, local_time: bool = False) -> str:
        """One line for the shell's live display.

        ``10:00:00.123 dep1/web/httpd  resource failed: process exited with signal 9``
        """
        when = self.time.astimezone() if local_time else self.time
        stamp = when.strftime("%H:%M:%S.") + f"{when.microsecond // 1000:03d}"
        return f"{stamp} {self.path()}  {self._summary()}"

    def _summary(self) -> str:
        kind = {
            EventType.DEPLOYABLE_STATE_CHANGE: "deployable",
            EventType.ASSEMBLY_STATE_CHANGE: "assembly",
            EventType.RESOURCE_STATE_CHANGE: "resource",
        }.get(self.type)
        if kind:
            text = f"{kind} {self.state or 'changed'}"
        elif self.type is EventType.ESCALATION:
            target = self.extra.get("escalated_to")
            text = f"escalation: restarting the {target}" if target else "escalation"
        elif self.type is EventType.CONFIG_ERROR:
            text = "configuration error"
        elif self.type is EventType.FENCING:
            text = "assembly fenced"
        elif self.type is EventType.HOOK_RESULT:
            text = "hook ran"
        else:
            text = "configuration reloaded"
        if self.reason:
            text += f": {self.reason}"
        duration = self.extra.get("duration_ms")
        if duration is not None and (self.state == "running" or "recovered_at" in self.extra):
            text += f" (recovered in {duration} ms)"
        return text
