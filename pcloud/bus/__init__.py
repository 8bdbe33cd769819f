"""pcloud's AMQP 1.0 bus (DESIGN §3, docs/architecture.md)."""

from pcloud.bus.bus import Bus, Subscription
from pcloud.bus.errors import BusError, BusTimeout, MethodError
from pcloud.bus.message import Message

__all__ = ["Bus", "BusError", "BusTimeout", "Message", "MethodError", "Subscription"]
