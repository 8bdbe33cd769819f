"""``dped``: the Deployable Policy Engine of one deployable.

Started by the CPE (``--managed``: stays in the foreground, the CPE supervises it), or by
hand with ``dped --deployable FILE.xml`` to keep one deployable alive without a CPE.
SIGTERM leaves the deployable running (a restarted DPE adopts it); the ``deployable_stop``
method stops everything and exits.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

EXIT_CONFIG = 2
EXIT_BUS = 3

log = logging.getLogger("dped")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="dped", description="Keep one pcloud deployable alive: "
                                "launch its assemblies, restart what fails, escalate.")
    p.add_argument("--deployable", required=True, metavar="FILE.xml",
                   help="the deployable document")
    p.add_argument("--state-dir", metavar="DIR",
                   help="pcloud state directory (default $PCLOUD_STATE_DIR or /var/lib/pcloud); "
                        "the DPE keeps its files in DIR/dpe/<deployable>/")
    p.add_argument("--engine", choices=("native", "pacemaker"), default="native",
                   help="transition computer (default native)")
    p.add_argument("--managed", action="store_true",
                   help="started by the CPE: stay in the foreground, log to stderr")
    p.add_argument("--foreground", action="store_true", help="do not daemonize")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from pcloud import config
    from pcloud.deployable import Deployable
    from pcloud.log import setup_logging
    from pcloud.xmlsafe import XMLError

    state_dir = Path(args.state_dir) if args.state_dir else config.state_dir()
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
    from pcloud.bus import BusError

    try:
        dpe = Dpe(dep, state_dir, engine=args.engine, handle_signals=True)
    except DriverError as exc:
        log.error("%s", exc)
        return EXIT_CONFIG
    try:
        return run_dpe(dpe)
    except BusError as exc:
        log.error("%s", exc)
        return EXIT_BUS


def _daemonize(directory: Path) -> None:
    """Detach with python-daemon; output goes to DIR/dped.log."""
    import daemon

    directory.mkdir(parents=True, exist_ok=True)
    out = open(directory / "dped.log", "a", buffering=1)
    context = daemon.DaemonContext(working_directory="/", umask=0o022, stdout=out, stderr=out,
                                   signal_map={}, files_preserve=[out])
    context.open()
    os.environ.setdefault("PCLOUD_DPE_DAEMONIZED", "1")
