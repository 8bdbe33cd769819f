"""Broker profiles: the one place that turns logical pcloud names into AMQP addresses.

Another AMQP 1.0 broker needs only a new profile class here (DESIGN §3). RabbitMQ's
``rabbitmq_amqp1_0`` plugin declares a queue from a plain name on attach and maps
``/topic/KEY`` onto the ``amq.topic`` exchange, with ``*`` and ``#`` for receivers.
"""

from __future__ import annotations

import re
import uuid

_NAME = re.compile(r"^[A-Za-z0-9_.\-]+$")
_TOPIC_KEY = re.compile(r"^[A-Za-z0-9_.\-*#]+$")
REPLY_PREFIX = "pcloud.reply."
RESERVED_PREFIX = "amq."  # RabbitMQ refuses to declare queues named so
MAX_QUEUE_NAME = 255  # bytes, RabbitMQ's limit on queue names


def _check(pattern: re.Pattern[str], value: str, what: str) -> str:
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise ValueError(f"invalid {what} {value!r}: use letters, digits, '_', '-', '.'")
    return value


class RabbitMQProfile:
    """Addresses understood by RabbitMQ 3.x with the ``rabbitmq_amqp1_0`` plugin."""

    name = "rabbitmq"

    def queue(self, name: str) -> str:
        """A shared queue: its plain name (declared non-durable on attach)."""
        return _check(_NAME, name, "queue name")

    def is_reply_address(self, address: object) -> bool:
        """True if a server may answer to ``address`` (a request's ``reply_to``): a plain
        queue name this broker declares on attach. RabbitMQ refuses ``/temp-queue/…``,
        ``queue://…``, ``topic://…`` and reserved ``amq.*`` names by ending the session, and
        ``/topic/…`` or ``/amq/queue/…`` would reach something other than the caller's queue."""
        return (isinstance(address, str) and _NAME.fullmatch(address) is not None
                and not address.startswith(RESERVED_PREFIX)
                and len(address.encode()) <= MAX_QUEUE_NAME)

    def topic(self, key: str) -> str:
        """A topic key (``*``/``#`` allowed for subscribers) on the ``amq.topic`` exchange."""
        return "/topic/" + _check(_TOPIC_KEY, key, "topic key")

    def new_reply_queue(self) -> str:
        """A fresh per-client reply queue; the broker's policy expires it once unused."""
        return self.queue(f"{REPLY_PREFIX}{uuid.uuid4()}")


def profile_for(product: str | None = None) -> RabbitMQProfile:
    """Pick the profile for a broker product; RabbitMQ is the only one so far."""
    return RabbitMQProfile()
