"""Bus test helpers: queue names of a test's own, and a queue served on a bus."""

from __future__ import annotations

import uuid

from pcloud.bus import Bus


def unique(prefix: str) -> str:
    return f"{prefix}.{uuid.uuid4().hex[:8]}"


def serve(server: Bus, handlers, **options) -> str:
    queue = unique("pcloud.test")
    assert server.serve(queue, handlers, **options).wait_attached()
    return queue
