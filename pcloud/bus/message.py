"""The pcloud message envelope (DESIGN §3) and its mapping onto proton messages."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from lxml import etree
from proton import Data, DataException, Described, ulong
from proton import Message as ProtonMessage

OPCODE = "pcloud.opcode"
CONTENT_TYPE = "application/xml"
#: The descriptor of a message's properties section (AMQP 1.0, 3.2.4).
PROPERTIES = ulong(0x73)


def new_id() -> str:
    """A fresh message or correlation id."""
    return str(uuid.uuid4())


@dataclass
class Message:
    """One bus message: an XML body plus the envelope fields pcloud uses.

    ``body`` may be given as an lxml Element; it is serialised at once so the message is
    immutable in practice once handed to the bus. ``address`` is filled in on receipt.
    ``user_id`` is the sender's broker login: the Bus stamps its own on every message it
    sends, and the broker refuses a message whose ``user_id`` is not its sender's login, so
    on receipt it is the authenticated sender (None when the sender set none).
    """

    body: str | Any = ""
    subject: str | None = None
    opcode: str | None = None
    reply_to: str | None = None
    correlation_id: str | None = None
    id: str | None = field(default_factory=new_id)
    properties: dict[str, Any] = field(default_factory=dict)
    address: str | None = None
    user_id: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.body, etree._Element):
            self.body = etree.tostring(self.body, encoding="unicode")
        elif isinstance(self.body, bytes | bytearray | memoryview):
            self.body = bytes(self.body).decode("utf-8", errors="replace")
        elif self.body is None:
            self.body = ""

    def to_proton(self) -> ProtonMessage:
        """Build the proton message carrying this envelope (on the proton thread: every
        proton call releases the GIL, so other threads only hand over plain objects)."""
        pm = ProtonMessage(body=self.body.encode("utf-8"))   # a data section (DESIGN §3)
        pm.content_type = CONTENT_TYPE
        pm.inferred = True
        if self.user_id:
            pm.user_id = self.user_id.encode("utf-8")
        if self.id is not None:
            pm.id = self.id
        if self.subject is not None:
            pm.subject = self.subject
        if self.reply_to is not None:
            pm.reply_to = self.reply_to
        if self.correlation_id is not None:
            pm.correlation_id = self.correlation_id
        if self.properties or self.opcode is not None:
            props = dict(self.properties)
            if self.opcode is not None:
                props[OPCODE] = self.opcode
            pm.properties = props
        return pm

    @classmethod
    def from_proton(cls, pm: ProtonMessage, address: str | None = None,
                    encoded: bytes | None = None) -> Message:
        """Read a received proton message; foreign senders may omit any field. The body may
        be a data section or (older senders) an amqp-value string. ``encoded`` (the message
        as received) supplies a ``user_id`` that proton could not read."""
        props = dict(pm.properties or {})
        opcode = props.pop(OPCODE, None)
        user_id = pm.user_id
        if isinstance(user_id, bytes | bytearray | memoryview):
            user_id = bytes(user_id).decode("utf-8", errors="replace")
        if not user_id and encoded:
            user_id = string_user_id(encoded)
        return cls(
            body=pm.body,
            subject=pm.subject,
            opcode=None if opcode is None else str(opcode),
            reply_to=pm.reply_to,
            correlation_id=None if pm.correlation_id is None else str(pm.correlation_id),
            id=None if pm.id is None else str(pm.id),
            properties=props,
            address=address,
            user_id=str(user_id) if user_id else None,
        )


def string_user_id(encoded: bytes) -> str | None:
    """The ``user_id`` of an encoded message when it is a string, else None.

    RabbitMQ 3.10 passes the ``user_id`` of an AMQP 0-9-1 publisher, which it checked against
    that publisher's login, to AMQP 1.0 receivers as a string, where AMQP 1.0 says binary;
    proton's decoder drops it.
    """
    data, offset = Data(), 0
    try:
        while offset < len(encoded):
            data.clear()
            offset += data.decode(encoded[offset:])
            data.rewind()
            data.next()
            section = data.get_object()
            if isinstance(section, Described) and section.descriptor == PROPERTIES:
                fields = section.value
                user_id = fields[1] if isinstance(fields, list) and len(fields) > 1 else None
                return user_id if isinstance(user_id, str) and user_id else None
    except (DataException, ValueError, TypeError):
        return None
    return None
