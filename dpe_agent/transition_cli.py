"""``pcloud-transition``: run a transition computer on a CIB file, print the graph XML."""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime

from dpe_agent.engines import ENGINES, EngineError, get_engine

MAX_CIB_BYTES = 256 * 1024 * 1024


class Refused(Exception):
    """What the operator gave cannot be used; the message is the whole one-line answer."""


def parse_now(text: str) -> datetime:
    """ISO 8601 ("2026-11-21T09:00:00Z"); a time without zone is taken as UTC."""
    try:
        value = datetime.fromisoformat(text.strip().replace("Z", "+00:00")
                                       .replace("z", "+00:00"))
    except ValueError:
        raise Refused(f"--now: {text!r} is not an ISO 8601 time "
                      "(e.g. 2026-11-21T09:00:00Z)") from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def read_cib(path: str) -> bytes:
    """The CIB's bytes; an unreadable file is one plain sentence, not Python's errno text."""
    if path == "-":
        return sys.stdin.buffer.read()
    try:
        with open(path, "rb") as src:
            return src.read()
    except FileNotFoundError:
        raise Refused(f"cannot read {path}: no such file") from None
    except IsADirectoryError:
        raise Refused(f"cannot read {path}: it is a directory") from None
    except PermissionError:
        raise Refused(f"cannot read {path}: permission denied") from None
    except OSError as exc:
        raise Refused(f"cannot read {path}: {(exc.strerror or str(exc)).lower()}") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="pcloud-transition",
        description="Compute the transition graph (Pacemaker's format) for a CIB.")
    parser.add_argument("--engine", choices=ENGINES, default="native",
                        help="transition computer (default: native)")
    parser.add_argument("--now", metavar="ISO8601",
                        help="the current time for failure timeouts (default: the CIB's "
                             "execution-date, else the clock)")
    parser.add_argument("cib", metavar="CIB.xml", help="the CIB file ('-' for stdin)")
    args = parser.parse_args(argv)
    from pcloud import xmlsafe

    try:
        data = read_cib(args.cib)
        cib = xmlsafe.parse(data, source=args.cib, max_bytes=MAX_CIB_BYTES)
        if cib.tag != "cib":
            raise ValueError(f"{args.cib}: expected a <cib> document, got <{cib.tag}>")
        if args.now:
            now = parse_now(args.now)
        elif cib.get("execution-date", "").isdigit():
            now = datetime.fromtimestamp(int(cib.get("execution-date")), UTC)
        else:
            now = datetime.now(UTC)
        graph = get_engine(args.engine).compute(cib, now)
    except (Refused, OSError, ValueError, EngineError, xmlsafe.XMLError) as exc:
        print(f"pcloud-transition: {' '.join(str(exc).split())}", file=sys.stderr)
        return 1
    sys.stdout.write(graph.to_xml())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
