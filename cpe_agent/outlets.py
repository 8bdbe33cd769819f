"""What cped shows to the outside besides the bus: Prometheus metrics and the web console.

Both are off by default and switched on by one line of the CPE's config file::

    [metrics]
    listen = 127.0.0.1:9464
    [web]
    listen = 127.0.0.1:8480

A bad value or a taken port is logged and that outlet stays off: cped keeps deployables
alive whatever happens to its windows onto them (as with a bad hook section).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from pathlib import Path

from cpe_agent.service import CpeService
from cpe_agent.supervisor import Supervisor
from pcloud import config

log = logging.getLogger("pcloud.cpe")


class Outlets:
    """The started outlets; ``close`` stops them."""

    def __init__(self) -> None:
        self._closers: list[Callable[[], None]] = []

    def close(self) -> None:
        for closer in reversed(self._closers):
            try:
                closer()
            except Exception:
                log.exception("closing an outlet failed")


def parse_listen(text: str) -> tuple[str, int]:
    """``host:port`` or ``port`` (host 127.0.0.1: a local port unless said otherwise)."""
    host, _, port = text.strip().rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    try:
        number = int(port)
    except ValueError:
        number = -1
    if not 0 < number < 65536:
        raise ValueError(f"listen = {text!r}: expected host:port or a port (1-65535)")
    return host, number


def listen_address(section: str) -> tuple[str, int] | None:
    """``[section] listen`` of the config file (None: off, or a bad value, logged)."""
    text = config.section(section).get("listen")
    if not text:
        return None
    try:
        return parse_listen(text)
    except ValueError as exc:
        log.error("[%s] in %s: %s: %s stays off", section, config.config_path(), exc, section)
        return None


def console_login(state_dir: Path) -> str:
    """The console's observer login, one per state dir: CPEs sharing a broker do not
    reset each other's password."""
    digest = hashlib.sha256(str(state_dir.resolve()).encode()).hexdigest()[:8]
    return f"pcloud-console-{digest}"


def start_outlets(service: CpeService, supervisor: Supervisor) -> Outlets:
    """Start what the config file asks for."""
    outlets = Outlets()
    where = listen_address("metrics")
    if where is not None:
        from cpe_agent.metrics import CpeMetrics, MetricsServer

        metrics = CpeMetrics(service.store, supervisor.watch, lambda: service.bus.connected)
        try:
            server = MetricsServer(metrics, *where)
        except OSError as exc:
            log.error("metrics stay off: cannot listen on %s:%d: %s", *where, exc)
        else:
            service.listeners.append(metrics.observe)
            supervisor.on_heartbeat_gap = metrics.heartbeat_gap
            outlets._closers.append(server.close)
    where = listen_address("web")
    if where is not None:
        from cpe_agent.web import Console

        console = Console(*where, broker_url=service.bus.url, cpe_user=service.bus.user,
                          admin=service.admin, login=console_login(supervisor.state_dir))
        try:
            console.start()
        except OSError as exc:
            log.error("web console stays off: cannot listen on %s:%d: %s", *where, exc)
        else:
            outlets._closers.append(console.close)
    return outlets
