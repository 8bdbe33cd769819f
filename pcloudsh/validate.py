"""``pcloudsh validate FILE``: check any pcloud XML document against its schema.

Prints ``valid`` (exit 0) or the first problem as ``FILE:LINE: message`` (exit 1). The schema
is chosen from the root element; deployables and service templates also get their semantic
checks (unique names, dependencies, what each service class needs).
"""

from __future__ import annotations

import sys
from typing import TextIO

from pcloud import schemas
from pcloud.deployable import Deployable, Service
from pcloud.xmlsafe import XMLError


def check(path: str, stdin: TextIO | None = None) -> str:
    """Validate one file (``-``: stdin) and return its schema name; XMLError otherwise."""
    if path == "-":
        stream = stdin or sys.stdin
        data = stream.buffer.read() if hasattr(stream, "buffer") else stream.read()
        name, root = schemas.load(data, source="<stdin>")
        source = "<stdin>"
    else:
        name, root = schemas.load_file(path)
        source = path
    if name == "deployable":
        Deployable.from_xml(root, source=source, assign_uuids=False)
    elif name == "service":
        Service.from_xml(root, source=source)
    return name


def problem(exc: XMLError, path: str) -> str:
    """``FILE:LINE: message``: one line that names the file, for every command that reads one."""
    where = exc.source or ("<stdin>" if path == "-" else path)
    prefix = f"{where}:{exc.line}: " if exc.line else f"{where}: "
    return prefix + " ".join(exc.message.split())


def run(path: str, out: TextIO = sys.stdout, stdin: TextIO | None = None) -> int:
    """The command: print the verdict and return the exit status.

    The verdict, ``valid`` or the first error, always goes to standard output, so a script
    reads it from one place; the exit status says which it was.
    """
    try:
        check(path, stdin)
    except XMLError as exc:
        print(problem(exc, path), file=out)
        return 1
    print("valid", file=out)
    return 0
