"""pcloud's AMQP 1.0 bus (DESIGN §3, docs/architecture.md)."""

from pcloud.bus.bus import Bus, Subscription
from pcloud.bus.connect import Backoff, connect
from pcloud.bus.errors import (
    BusAuthError,
    BusError,
    BusTimeout,
    BusTLSError,
    BusUnreachable,
    MethodError,
)
from pcloud.bus.message import Message

__all__ = ["Backoff", "Bus", "BusAuthError", "BusError", "BusTLSError", "BusTimeout",
           "BusUnreachable", "Message", "MethodError", "Subscription", "connect"]
