"""Method requests on ``pcloud.agent.<dep>.<asm>``, answered concurrently per resource.

A 20 s OCF start must not hold up a probe of another resource, yet two operations on one
resource must run in arrival order. ``Bus.serve`` does both with a serial key: the name of
the resource a ``<resource_op>`` names (other methods have no key and run at once). The bus
also answers repeated request ids from its cache and turns errors into error responses.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from lxml import etree

from pcloud.bus import Bus, Message, Subscription
from pcloud.bus.addressing import REPLY_PREFIX
from pcloud.wire.resource_op import resource_name

log = logging.getLogger(__name__)

Handler = Callable[[str, etree._Element], etree._Element]
METHODS = ("resource_start", "resource_stop", "resource_monitor", "resource_cancel",
           "resource_status", "agent_info")
WORKERS = 8


def resource_key(method: str, body: etree._Element, msg: Message) -> str | None:
    """The resource a request operates on; requests naming none are not serialised."""
    return resource_name(body)


class AgentServer:
    """Serves the agent queue with ``handler(method, body)`` on a pool of workers."""

    def __init__(self, bus: Bus, queue: str, handler: Handler, workers: int = WORKERS,
                 controller: str | None = None) -> None:
        self.bus = bus
        self.queue = queue
        self.handler = handler
        self.workers = workers
        self.controller = controller
        # an agent may publish only on its DPE's reply topic (docs/security.md)
        self.reply_prefix = (f"/topic/{REPLY_PREFIX}{controller}." if controller else None)
        self._served: Subscription | None = None

    def start(self) -> Subscription:
        handlers = {method: self._bind(method) for method in METHODS}
        self._served = self.bus.serve(self.queue, handlers, workers=self.workers,
                                      serial_key=resource_key, authorize=self.authorize,
                                      reply_prefix=self.reply_prefix)
        return self._served

    def authorize(self, method: str, msg: Message) -> str | None:
        """Only this deployable's DPE (the controller login) operates on resources."""
        if self.controller is None or msg.user_id == self.controller:
            return None
        return f"this agent takes requests only from {self.controller}"

    def close(self) -> None:
        if self._served is not None:
            self._served.cancel()
            self._served = None

    def _bind(self, method: str) -> Callable[[etree._Element, Message], etree._Element]:
        return lambda body, msg: self.handler(method, body)
