"""The ``pcloudsh`` entry point: dispatches a one-shot command to its module."""

from __future__ import annotations

import argparse
import sys

from pcloudsh import validate


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pcloudsh", description="pcloud operator shell and one-shot commands")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    check = commands.add_parser(
        "validate", help="check a pcloud XML document against its schema",
        description="Check any pcloud XML document (deployable, service template, event, "
                    "message body) against its schema. Prints 'valid' (exit 0) or the first "
                    "error with its line (exit 1).")
    check.add_argument("file", metavar="FILE", help="the document; '-' reads standard input")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "validate":
        return validate.run(args.file)
    parser.print_help(sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
