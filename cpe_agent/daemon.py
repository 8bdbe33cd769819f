"""The CPE process: store, bus, supervisor and method handlers wired together.

Start order matters: the store first (the truth), then the bus subscriptions that feed the
supervisor (heartbeats, events), then re-adoption of running DPEs, and only then the public
queue, so no request is answered from a half-started CPE. On shutdown the DPEs keep running:
they keep the deployables alive and the next CPE re-adopts them.
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
from pathlib import Path
from typing import IO

from cpe_agent.hooks import HookRunner, load_hooks
from cpe_agent.outlets import start_outlets
from cpe_agent.service import (
    CPE_QUEUE,
    DPE_HEARTBEATS,
    EVENT_TOPICS,
    SERVE_WORKERS,
    CpeService,
)
from cpe_agent.store import Store
from cpe_agent.supervisor import Supervisor
from pcloud import config
from pcloud.broker_admin import BrokerAdminError, admin_from_config
from pcloud.bus import Backoff, Bus, BusError, connect
from pcloud.rolebook import RoleBook

log = logging.getLogger("pcloud.cpe")

CONNECT_BACKOFF = Backoff(first=0.5, cap=10.0)


class AlreadyRunning(Exception):
    """Another CPE holds this state directory."""


class NoBrokerAdmin(Exception):
    """The CPE cannot administer the broker's users, so it could give no one an identity."""


def allowed_infrastructures() -> frozenset[str] | None:
    """``[cpe] infrastructures = process, libvirt`` in the config file (None: all)."""
    text = config.section("cpe").get("infrastructures")
    if text is None:
        return None
    return frozenset(word.strip() for word in text.replace(",", " ").split() if word.strip())


def broker_admin():
    try:
        admin = admin_from_config()
    except BrokerAdminError as exc:
        raise NoBrokerAdmin(str(exc)) from None
    if admin is None:
        raise NoBrokerAdmin(
            "cped needs to administer the broker's users (one identity per DPE and per "
            "assembly boot): run the private broker (pcloud-broker start) in "
            f"{config.state_dir()}, or set [broker_admin] url in {config.config_path()} (or "
            "PCLOUD_BROKER_ADMIN) to the management API of your RabbitMQ")
    return admin


def lock_state_dir(state_dir: Path) -> IO[str]:
    """Hold ``state_dir/cped.lock`` for this CPE: the open file keeps the lock (a daemon
    takes it before detaching, so a second cped is refused on the terminal, not in a log).
    AlreadyRunning names the holder's pid."""
    state_dir.mkdir(parents=True, exist_ok=True)
    handle = open(state_dir / "cped.lock", "a+", encoding="utf-8")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip()
        handle.close()
        pid = f" (pid {holder})" if holder.isdigit() else ""
        raise AlreadyRunning(f"another cped runs on {state_dir}{pid}") from None
    _write_pid(handle)
    return handle


def _write_pid(handle: IO[str]) -> None:
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()


class Cped:
    """One CPE on one state directory; ``run`` blocks until ``stop`` is called.

    ``lock_file``: the state dir's lock, when the caller took it already (lock_state_dir)."""

    def __init__(self, state_dir: Path, broker_url: str,
                 dped_command: list[str] | None = None,
                 lock_file: IO[str] | None = None) -> None:
        self.state_dir = state_dir
        self.broker_url = broker_url
        self.dped_command = dped_command
        self._stop = threading.Event()
        self._lock_file = lock_file

    def stop(self) -> None:
        """Ask ``run`` to return (safe from a signal handler: it only sets a flag)."""
        self._stop.set()

    def _lock(self) -> None:
        if self._lock_file is None:
            self._lock_file = lock_state_dir(self.state_dir)
        else:
            _write_pid(self._lock_file)   # the daemon's pid, not its parent's

    def _connect(self) -> Bus | None:
        """Connect, retrying with back-off: a CPE started before its broker waits for it.
        Refused credentials or an untrusted certificate cannot get better: raised at once."""
        return connect(lambda: Bus(url=self.broker_url, name="cped"), self._stop,
                       backoff=CONNECT_BACKOFF)

    @staticmethod
    def _hooks(service: CpeService) -> HookRunner:
        """Operator hooks on every newly stored event; a bad section is logged and skipped."""
        hooks, errors = load_hooks(config.config_path())
        for error in errors:
            log.error("hook not used: %s", error)
        runner = HookRunner(hooks, publish=service.raise_event)
        if hooks:
            service.on_stored = runner.submit
            log.info("hooks: %s", ", ".join(h.name for h in hooks))
        return runner

    def run(self) -> None:
        self._lock()
        admin = broker_admin()
        hint = config.broker_hint(self.broker_url)
        if hint:
            log.warning("%s", hint)
        store = Store(self.state_dir / "cpe.sqlite")
        try:
            bus = self._connect()
        except BusError:
            store.close()
            raise
        if bus is None:
            store.close()
            return
        supervisor = Supervisor(store, self.state_dir, self.broker_url, self.dped_command,
                                admin=admin, cpe_user=bus.user)
        service = CpeService(store, supervisor, bus, admin=admin, roles=RoleBook(admin),
                             infrastructures=allowed_infrastructures())
        supervisor.request_stop = service.request_stop
        supervisor.raise_event = service.raise_event
        hooks = self._hooks(service)
        outlets = start_outlets(service, supervisor)    # [metrics], [web]: off by default
        supervisor.bus_connected = lambda: bus.connected
        try:
            subs = [bus.subscribe(EVENT_TOPICS, service.on_event),
                    bus.subscribe(DPE_HEARTBEATS, service.on_heartbeat)]
            for sub in subs:
                sub.wait_attached(timeout=10.0)
            bus.on_reconnect(supervisor.bus_reconnected)
            supervisor.start()
            served = bus.serve(CPE_QUEUE, service.handlers(), workers=SERVE_WORKERS,
                               serial_key=service.serial_key, authorize=service.authorize)
            if not served.wait_attached(timeout=10.0):
                log.warning("queue %s not attached yet; the bus keeps trying", CPE_QUEUE)
            (self.state_dir / "cped.pid").write_text(f"{os.getpid()}\n")
            log.info("CPE ready on %s (state %s, %d deployables stored)",
                     CPE_QUEUE, self.state_dir, len(store.list()))
            while not self._stop.wait(1.0):
                supervisor.reap()
            log.info("CPE stopping; DPEs keep running")
        finally:
            outlets.close()
            hooks.close()
            supervisor.close()
            bus.close()
            store.close()
            try:
                (self.state_dir / "cped.pid").unlink()
            except FileNotFoundError:
                pass
