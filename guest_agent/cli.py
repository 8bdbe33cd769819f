"""``pcloud-agent``: the guest agent's command line, daemonization and main loop."""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import signal
import socket
import sys
import threading
import time
from urllib.parse import urlsplit

from guest_agent import __version__
from guest_agent.config import DEFAULT_CONFIG, AgentConfig, ConfigError, load
from guest_agent.reaper import become_subreaper
from pcloud import wire
from pcloud.credentials import SECRET_VARIABLES

log = logging.getLogger("guest_agent")
EXIT_CONFIG = 2
#: seconds the agent waits for a route to its broker before its first connection attempt
ROUTE_WAIT = 30.0
ROUTE_POLL = 0.05


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="pcloud-agent",
        description="pcloud guest agent: runs and monitors the resources of one assembly, "
                    "heartbeats and reports over the AMQP 1.0 bus.")
    p.add_argument("--config", metavar="PATH",
                   help=f"INI file with an [agent] section (default {DEFAULT_CONFIG}, "
                        "optional when every setting is given as a flag)")
    p.add_argument("--deployable", help="deployable name (overrides the config file)")
    p.add_argument("--assembly", help="assembly name")
    p.add_argument("--uuid", help="assembly uuid (default: generated once, kept in state dir)")
    p.add_argument("--broker-url", help="amqp[s]://user:password@host:port "
                                        "(default: config, then PCLOUD_BROKER_URL)")
    p.add_argument("--credentials", metavar="PATH",
                   help="file with this boot's broker login (user=, password=), or 'fw_cfg' "
                        "for the one QEMU hands the VM (default: config)")
    p.add_argument("--controller", help="broker login whose requests it takes "
                                        "(default: dpe.<deployable>)")
    p.add_argument("--state-dir", help="directory for logs, pids and known resources")
    p.add_argument("--heartbeat-interval", help="seconds between heartbeats (default 1)")
    p.add_argument("--pidfile", help="pid file when daemonized")
    p.add_argument("--foreground", action="store_true", help="stay attached (no daemon)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.add_argument("--version", action="version", version=f"pcloud-agent {__version__}")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    overrides = {"deployable": args.deployable, "assembly": args.assembly, "uuid": args.uuid,
                 "broker_url": args.broker_url, "state_dir": args.state_dir,
                 "credentials": args.credentials, "controller": args.controller,
                 "heartbeat_interval": args.heartbeat_interval, "pidfile": args.pidfile}
    try:
        config = load(args.config, overrides)
    except ConfigError as exc:
        print(f"pcloud-agent: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    from pcloud.log import setup_logging

    if not args.foreground:
        context = _daemon_context(config)
        context.open()
    setup_logging("pcloud-agent", args.verbose)
    return run(config)


def _daemon_context(config: AgentConfig):
    """python-daemon's context: detach, pid file, output to <state>/agent.log."""
    import daemon
    import daemon.pidfile

    pidfile = config.pidfile or os.path.join(config.state_dir, "pcloud-agent.pid")
    log_file = open(os.path.join(config.state_dir, "agent.log"), "a", buffering=1)
    return daemon.DaemonContext(working_directory="/", umask=0o022, stdout=log_file,
                                stderr=log_file,
                                pidfile=daemon.pidfile.TimeoutPIDLockFile(pidfile, 5),
                                signal_map={})


def run(config: AgentConfig) -> int:
    """Reap, resume resources, connect (retrying), serve and heartbeat until SIGTERM/SIGINT."""
    from guest_agent.addresses import AddressTracker
    from guest_agent.agent import Agent
    from guest_agent.heartbeat import REBEATS, Heartbeater
    from guest_agent.server import AgentServer
    from pcloud.bus import Backoff, BusError, connect

    for name in SECRET_VARIABLES:      # no resource ever inherits a secret (docs/security.md)
        os.environ.pop(name, None)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda *_: stop.set())
    if os.getpid() == 1:
        log.info("running as PID 1 of the sandbox: reaping every process")
    elif become_subreaper():
        log.info("child subreaper: daemonized resources stay our children")
    agent = Agent(config)
    agent.start()
    _wait_for_route(config.broker_url, stop)
    # Any refusal is waited out too: its DPE may still be creating this boot's login (or
    # re-creating it on a broker that lost its users), and an agent has nothing else to do.
    bus = connect(lambda: _bus(config),
                  stop, attempt=5.0, backoff=Backoff(first=0.2, cap=5.0), retry=(BusError,))
    if bus is None:
        agent.stop()
        return 0
    agent.publish_fn = bus.publish
    attrs = {"deployable": config.deployable, "assembly": config.assembly, "uuid": config.uuid,
             "started": agent.started, "pid": str(os.getpid())}
    addresses = AddressTracker()
    beats = Heartbeater(bus.publish, config.heartbeat_key, attrs, config.heartbeat_interval,
                        agent.states, wire.now, scheduler=agent.scheduler,
                        addresses=addresses.for_beat)
    server = AgentServer(bus, config.agent_queue, agent.handle, controller=config.controller)
    bus.on_reconnect(agent.on_reconnect)
    bus.on_reconnect(lambda: addresses.reconnected(1 + len(REBEATS)))
    bus.on_reconnect(beats.after_reconnect)
    server.start()
    beats.start()
    agent.on_reconnect()
    log.info("agent %s/%s (%s) serving %s", config.deployable, config.assembly, config.uuid,
             config.agent_queue)
    _sd_notify("READY=1")
    while not stop.wait(3600):
        pass
    log.info("shutting down (resources keep running)")
    _sd_notify("STOPPING=1")
    beats.stop()
    server.close()
    bus.close()
    agent.stop()
    return 0


def _bus(config: AgentConfig):
    """The agent's bus, verifying the broker with the TLS settings its boot handed over."""
    from pcloud.bus import Bus

    name = f"pcloud-agent-{config.deployable}-{config.assembly}"
    if config.tls is None or not config.broker_url.startswith("amqps://"):
        return Bus(url=config.broker_url, name=name)
    from pcloud.bus.tls import client_domain

    return Bus(url=config.broker_url, name=name, ssl_domain=client_domain(config.tls),
               server_name=config.tls.server_name)


def _wait_for_route(url: str, stop: threading.Event, timeout: float = ROUTE_WAIT) -> None:
    """Return once this machine has a route to the broker (an address given as an IP only).

    A VM's agent starts while its network is still being configured (its unit waits for no
    ``network-online.target``): waiting here lets it connect the moment the address is there,
    not one back-off step later. A UDP ``connect`` sends nothing, it only looks the route up.
    """
    parts = urlsplit(url)
    try:
        address = ipaddress.ip_address(parts.hostname or "")
    except ValueError:
        return
    family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
    deadline = time.monotonic() + timeout
    while not stop.is_set() and time.monotonic() < deadline:
        try:
            with socket.socket(family, socket.SOCK_DGRAM) as probe:
                probe.connect((str(address), parts.port or 5672))
            return
        except OSError:
            stop.wait(ROUTE_POLL)


def _sd_notify(state: str) -> None:
    """Tell systemd (Type=notify) we are ready; nothing when not run by systemd."""
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return
    if path.startswith("@"):
        path = "\0" + path[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.sendto(state.encode(), path)
    except OSError as exc:
        log.warning("sd_notify failed: %s", exc)


if __name__ == "__main__":
    sys.exit(main())
