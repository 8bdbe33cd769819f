"""The ``pcloudsh`` entry point: the interactive shell, or one command given on the line.

``pcloudsh`` alone opens the shell (on a terminal, or with ``-i``); ``pcloudsh
deployable_start dep1`` runs one command and exits non-zero with a one-line error on failure.
Options go before the command: ``--json`` (tabular output as JSON), ``--state-dir``,
``--broker-url``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from pcloud.log import setup_logging
from pcloudsh import validate


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pcloudsh",
        description="pcloud operator shell. Without a command it is interactive (completion, "
                    "history, live events); with one it runs it and exits. "
                    "'pcloudsh help' lists the commands.")
    parser.add_argument("--json", action="store_true",
                        help="print tables (lists, status, events) as JSON")
    parser.add_argument("--state-dir", type=Path, default=None,
                        help="where the catalogue lives (default: $PCLOUD_STATE_DIR)")
    parser.add_argument("--broker-url", default=None,
                        help="AMQP 1.0 broker (default: $PCLOUD_BROKER_URL)")
    parser.add_argument("-i", "--interactive", action="store_true",
                        help="open the shell even when standard input is not a terminal")
    parser.add_argument("--no-live-events", action="store_true",
                        help="interactive shell: do not show events above the prompt")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="log bus activity on standard error")
    parser.add_argument("command", nargs="?", metavar="COMMAND",
                        help="a command such as deployable_start, or validate FILE")
    parser.add_argument("args", nargs=argparse.REMAINDER, metavar="ARG")
    return parser


VALIDATE_USAGE = """usage: pcloudsh validate FILE|-

Checks any pcloud XML document (a deployable, an event, a CPE method body, ...) against the
schema its root element calls for, and a deployable's rules too. Prints 'valid' (exit 0) or
the first error as FILE:LINE: message (exit 1). '-' reads standard input."""


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "validate" and args.args in (["-h"], ["--help"]):
        print(VALIDATE_USAGE)
        return 0
    if args.command == "validate" and len(args.args) == 1:
        return validate.run(args.args[0])
    if args.command is None and not (args.interactive or sys.stdin.isatty()):
        parser.print_help(sys.stderr)
        return 2
    from pcloudsh.commands import CommandError, Commands, check_broker_url

    if args.broker_url is not None:
        try:
            check_broker_url(args.broker_url)
        except CommandError as exc:
            print(f"pcloudsh: --broker-url: {exc}", file=sys.stderr)
            return 2

    # Bus trouble reaches the operator as the command's one-line error, not as log noise.
    if args.verbose:
        setup_logging("pcloudsh", verbose=True)
    else:
        logging.getLogger("pcloud").setLevel(logging.CRITICAL)
        logging.getLogger("proton").setLevel(logging.CRITICAL)
    from pcloudsh.shell import Shell

    commands = Commands(state_dir=args.state_dir, json_output=args.json,
                        broker_url=args.broker_url)
    shell = Shell(commands, live_events=not args.no_live_events)
    try:
        if args.command is None:
            try:
                shell.cmdloop()
            except KeyboardInterrupt:
                print(file=sys.stderr)
            return 0
        if args.command == "help":
            shell.onecmd(" ".join(["help", *args.args]))
            return 0
        try:
            commands.run(args.command, args.args)
        except CommandError as exc:
            print(f"pcloudsh: {args.command}: {exc}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            return 130
        except BrokenPipeError:
            sys.stderr.close()
            return 0
        return 0
    finally:
        commands.close()


if __name__ == "__main__":
    sys.exit(main())
