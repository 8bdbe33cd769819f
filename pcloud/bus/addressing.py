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
QUEUE_PREFIX = "/queue/"  # what RabbitMQ makes of an AMQP 0-9-1 client's reply_to
TOPIC_PREFIX = "/topic/"
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
        queue name this broker declares on attach, the same as ``/queue/<name>`` (an AMQP
        0-9-1 client's reply queue), or a ``/topic/pcloud.reply.…`` key (how a DPE's agents,
        which may write to no queue, answer it). RabbitMQ refuses ``/temp-queue/…``,
        ``queue://…``, ``topic://…`` and reserved ``amq.*`` names by ending the session, and
        other ``/topic/…`` or ``/amq/queue/…`` addresses would reach something other than the
        caller."""
        if not isinstance(address, str):
            return False
        if address.startswith(TOPIC_PREFIX):
            key = address[len(TOPIC_PREFIX):]
            return (key.startswith(REPLY_PREFIX) and _NAME.fullmatch(key) is not None
                    and len(key.encode()) <= MAX_QUEUE_NAME)
        name = address.removeprefix(QUEUE_PREFIX)
        return (_NAME.fullmatch(name) is not None and not name.startswith(RESERVED_PREFIX)
                and len(name.encode()) <= MAX_QUEUE_NAME)

    def topic(self, key: str) -> str:
        """A topic key (``*``/``#`` allowed for subscribers) on the ``amq.topic`` exchange."""
        return "/topic/" + _check(_TOPIC_KEY, key, "topic key")

    def new_reply_queue(self) -> str:
        """A fresh per-client reply queue; the broker's policy expires it once unused."""
        return self.queue(f"{REPLY_PREFIX}{uuid.uuid4()}")

    def reply_topic(self, key: str) -> str:
        """A reply address on a topic key (``pcloud.reply.…``), for callers whose callees
        may publish only on topic keys of their own."""
        if not key.startswith(REPLY_PREFIX):
            raise ValueError(f"invalid reply topic key {key!r}: must start {REPLY_PREFIX}")
        return self.topic(key)


def profile_for(product: str | None = None) -> RabbitMQProfile:
    """Pick the profile for a broker product; RabbitMQ is the only one so far."""
    return RabbitMQProfile()
