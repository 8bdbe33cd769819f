"""``dped``: the Deployable Policy Engine of one deployable.

Started by the CPE (``--managed``: stays in the foreground, the CPE supervises it), or by
hand with ``dped --deployable FILE.xml`` to keep one deployable alive without a CPE.
SIGTERM leaves the deployable running (a restarted DPE adopts it); the ``deployable_stop``
method stops everything and exits: ``dped --stop --deployable FILE.xml`` (or ``--name``)
sends it and waits until the DPE has exited, ``dped --status`` shows the deployable.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

from pcloud import procstat
from pcloud.exitcodes import EXIT_BUS, EXIT_CONFIG, EXIT_FAILED
from pcloud.wire import NAME

STOP_TIMEOUT = 120.0
_NAME = NAME

log = logging.getLogger("dped")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="dped", description="Keep one pcloud deployable alive: "
                                "launch its assemblies, restart what fails, escalate.")
    p.add_argument("--deployable", metavar="FILE.xml", help="the deployable document")
    p.add_argument("--name", help="the deployable's name (for --stop and --status, instead "
                   "of --deployable)")
    action = p.add_mutually_exclusive_group()
    action.add_argument("--stop", action="store_true",
                        help="stop the deployable of a running dped (its resources, then its "
                             "assemblies) and wait until that dped has exited")
    action.add_argument("--status", action="store_true",
                        help="print the state of a running dped's deployable")
    p.add_argument("--timeout", type=float, default=STOP_TIMEOUT,
                   help=f"seconds --stop waits (default {STOP_TIMEOUT:g})")
    p.add_argument("--state-dir", metavar="DIR",
                   help="pcloud state directory (default $PCLOUD_STATE_DIR or /var/lib/pcloud); "
                        "the DPE keeps its files in DIR/dpe/<deployable>/")
    p.add_argument("--engine", choices=("native", "pacemaker"), default="native",
                   help="transition computer (default native)")
    p.add_argument("--managed", action="store_true",
                   help="started by the CPE: stay in the foreground, log to stderr")
    p.add_argument("--credentials-fd", type=int, metavar="FD",
                   help="read this DPE's broker login from FD (the CPE hands it over a pipe)")
    p.add_argument("--requested-by", metavar="USER", help="who started the deployable "
                                                          "(recorded on its first event)")
    p.add_argument("--seq-floor", type=_seq_floor, default=0, metavar="N",
                   help="the deployable's event seq is already at least N (events the CPE "
                        "numbered while no DPE ran): this DPE numbers its events above it")
    p.add_argument("--foreground", action="store_true", help="do not daemonize")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p.parse_args(argv)


def _seq_floor(text: str) -> int:
    from pcloud.events import MAX_SEQ

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if not 0 <= value < MAX_SEQ:
        raise argparse.ArgumentTypeError(f"must be between 0 and {MAX_SEQ - 1}")
    return value


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from pcloud import config
    from pcloud.deployable import Deployable
    from pcloud.log import setup_logging
    from pcloud.xmlsafe import XMLError

    state_dir = Path(args.state_dir) if args.state_dir else config.state_dir()
    if args.stop or args.status:
        return _control(args, state_dir)
    if not args.deployable:
        print("dped: --deployable FILE.xml is required", file=sys.stderr)
        return EXIT_CONFIG
    try:
        text = Path(args.deployable).read_bytes()
        dep = Deployable.from_xml(text, source=args.deployable)
    except (OSError, XMLError) as exc:
        print(f"dped: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    if not (args.foreground or args.managed):
        _daemonize(state_dir / "dpe" / dep.name)
    setup_logging("dped", args.verbose)
    from dpe_agent.daemon import Dpe, run_dpe
    from dpe_agent.drivers import DriverError
    from dpe_agent.identity import managed_identity
    from pcloud.broker_admin import BrokerAdminError
    from pcloud.bus import BusError
    from pcloud.credentials import CredentialsError

    try:
        identity = None
        if args.credentials_fd is not None:
            identity = managed_identity(dep.name, config.broker_url(), args.credentials_fd)
        dpe = Dpe(dep, state_dir, engine=args.engine, identity=identity,
                  requested_by=args.requested_by, handle_signals=True,
                  seq_floor=args.seq_floor)
    except (DriverError, CredentialsError, BrokerAdminError) as exc:
        log.error("%s", exc)
        return EXIT_CONFIG
    try:
        return run_dpe(dpe)
    except BusError as exc:
        log.error("%s", exc)
        return EXIT_BUS


def _target(args: argparse.Namespace) -> str | None:
    """The deployable's name from --name or the document of --deployable."""
    if args.name:
        return args.name if _NAME.match(args.name) else None
    if not args.deployable:
        return None
    from pcloud.deployable import Deployable
    from pcloud.xmlsafe import XMLError

    try:
        return Deployable.from_xml(Path(args.deployable).read_bytes(),
                                   source=args.deployable).name
    except (OSError, XMLError) as exc:
        print(f"dped: {exc}", file=sys.stderr)
        return None


def _control(args: argparse.Namespace, state_dir: Path) -> int:
    """``--stop`` / ``--status``: method calls on the queue of a running DPE."""
    from lxml import etree

    from pcloud import config
    from pcloud.bus import Bus, BusError, BusTimeout, MethodError

    name = _target(args)
    if name is None:
        print("dped: --stop and --status need --name NAME or --deployable FILE.xml",
              file=sys.stderr)
        return EXIT_CONFIG
    url = config.broker_url()
    bus = Bus(url=url, name="dped-control")
    try:
        bus.start(timeout=10.0)
    except BusError as exc:
        print(f"dped: {config.unreachable(url, exc)}", file=sys.stderr)
        return EXIT_BUS
    ref = etree.tostring(etree.Element("deployable", name=name), encoding="unicode")
    queue = f"pcloud.dpe.{name}"
    try:
        if args.status:
            status = bus.call(queue, "deployable_status", ref, timeout=10.0)
            if status is None:
                print(f"dped: the DPE of {name} answered deployable_status with no status",
                      file=sys.stderr)
                return EXIT_FAILED
            print(_status_text(status))
            return 0
        pid = _dpe_pid(state_dir, name)
        bus.call(queue, "deployable_stop", ref, timeout=10.0)
        print(f"deployable {name}: stopping", flush=True)
        return _wait_stopped(bus, queue, ref, pid, args.timeout, name)
    except BusTimeout:
        print(f"dped: no DPE of {name} answers on {queue}", file=sys.stderr)
        return EXIT_FAILED
    except MethodError as exc:
        print(f"dped: {exc.code}: {exc.message}", file=sys.stderr)
        return EXIT_FAILED
    except BusError as exc:
        print(f"dped: {exc}", file=sys.stderr)
        return EXIT_BUS
    finally:
        bus.close()


def _dpe_pid(state_dir: Path, name: str) -> int | None:
    try:
        return int((state_dir / "dpe" / name / "dped.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _wait_stopped(bus, queue: str, ref: str, pid: int | None, timeout: float,
                  name: str) -> int:
    """Until the DPE has exited (its pid, when this host has it) or says ``stopped``."""
    from pcloud.bus import BusError, BusTimeout, MethodError

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pid is not None:
            if not procstat.alive(pid):
                print(f"deployable {name}: stopped")
                return 0
        else:
            try:
                status = bus.call(queue, "deployable_status", ref, timeout=5.0)
                state = status.get("state") if status is not None else None
            except BusTimeout:
                state = "stopped"      # it took the stop and no longer answers: it exited
            except (BusError, MethodError):
                state = None
            if state == "stopped":
                print(f"deployable {name}: stopped")
                return 0
        time.sleep(0.2)
    print(f"dped: deployable {name} did not stop within {timeout:g} s", file=sys.stderr)
    return EXIT_FAILED


def _status_text(status) -> str:
    lines = [f"deployable {status.get('name')}: {status.get('state')}"
             + (f" ({status.get('reason')})" if status.get("reason") else "")]
    for asm in status.iter("assembly"):
        lines.append(f"  {asm.get('name')}: {asm.get('state')} "
                     f"(fails {asm.get('fail_count', '0')})")
        for rsc in asm.iter("resource"):
            lines.append(f"    {rsc.get('name')}: {rsc.get('state')} "
                         f"(fails {rsc.get('fail_count', '0')})"
                         + (f" {rsc.get('reason')}" if rsc.get("reason") else ""))
    return "\n".join(lines)


def _daemonize(directory: Path) -> None:
    """Detach with python-daemon; output goes to DIR/dped.log."""
    import daemon

    directory.mkdir(parents=True, exist_ok=True)
    out = open(directory / "dped.log", "a", buffering=1)
    context = daemon.DaemonContext(working_directory="/", umask=0o022, stdout=out, stderr=out,
                                   signal_map={}, files_preserve=[out])
    context.open()
    os.environ.setdefault("PCLOUD_DPE_DAEMONIZED", "1")
