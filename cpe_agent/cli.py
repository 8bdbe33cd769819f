"""``cped``: the Cloud Policy Engine daemon.

Daemonizes with python-daemon unless ``--foreground`` (systemd runs it in the foreground).
Before detaching it takes the state dir's lock and checks it can administer the broker, so
those mistakes are one line on the terminal and exit status 1, not only a line in
``cped.log``. Signal handlers only ask the daemon to stop; the main thread does the stopping.
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import signal
import sys
from pathlib import Path
from typing import IO

from pcloud import config
from pcloud.log import setup_logging

log = logging.getLogger("pcloud.cpe")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="cped",
        description="Cloud Policy Engine: accepts deployables on queue pcloud.cpe, stores "
                    "them, runs and supervises one DPE (dped) per deployable.")
    parser.add_argument("--foreground", action="store_true",
                        help="stay attached to the terminal (for systemd and tests)")
    parser.add_argument("--state-dir", type=Path, default=None,
                        help="directory of the store and the DPEs' files "
                             "(default: $PCLOUD_STATE_DIR or /var/lib/pcloud)")
    parser.add_argument("--broker-url", default=None,
                        help="AMQP 1.0 broker (default: $PCLOUD_BROKER_URL or the config file)")
    parser.add_argument("--dped-command", default=None,
                        help="command that runs a DPE (default: the dped installed beside "
                             "this cped)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    state_dir = (args.state_dir or config.state_dir()).resolve()
    if args.state_dir is not None:
        os.environ["PCLOUD_STATE_DIR"] = str(state_dir)
    broker_url = args.broker_url or config.broker_url()
    dped_command = shlex.split(args.dped_command) if args.dped_command else None
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        print(f"cped: cannot use state directory {state_dir}: {exc}", file=sys.stderr)
        return 1
    if args.foreground:
        return _run(state_dir, broker_url, dped_command, args.verbose)
    import daemon

    from cpe_agent.daemon import AlreadyRunning, NoBrokerAdmin, broker_admin, lock_state_dir

    try:
        lock = lock_state_dir(state_dir)
        broker_admin()
    except (AlreadyRunning, NoBrokerAdmin) as exc:
        print(f"cped: {exc}", file=sys.stderr)
        return 1
    with open(state_dir / "cped.log", "a", encoding="utf-8") as logfile, \
            daemon.DaemonContext(stdout=logfile, stderr=logfile, umask=0o022,
                                 working_directory="/", files_preserve=[lock]):
        return _run(state_dir, broker_url, dped_command, args.verbose, lock)


def _run(state_dir: Path, broker_url: str, dped_command: list[str] | None,
         verbose: bool, lock: IO[str] | None = None) -> int:
    from cpe_agent.daemon import AlreadyRunning, Cped, NoBrokerAdmin
    from pcloud.bus import BusError

    setup_logging("cped", verbose=verbose)
    cped = Cped(state_dir, broker_url, dped_command, lock_file=lock)
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, lambda *_: cped.stop())
    try:
        cped.run()
    except (AlreadyRunning, NoBrokerAdmin, BusError) as exc:
        log.error("%s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
