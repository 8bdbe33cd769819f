"""The one safe XML parser of pcloud: every document from the bus or disk goes through it.

Bus input is untrusted (DESIGN §5): no entity expansion, no DTD loading, no network, a size
limit, and any DOCTYPE rejected outright, so entity bombs and external entities never reach
libxml2's expansion code. Errors carry a line number for the sender.
"""

from __future__ import annotations

import re

from lxml import etree

MAX_BYTES = 1024 * 1024
_DOCTYPE = re.compile(rb"<!\s*(DOCTYPE|ENTITY)", re.IGNORECASE)


class XMLError(Exception):
    """A document is not acceptable; ``line`` is 1-based, or None when unknown."""

    def __init__(self, message: str, line: int | None = None, source: str | None = None) -> None:
        self.message = message
        self.line = line
        self.source = source
        where = source or "<xml>"
        super().__init__(f"{where}:{line}: {message}" if line else f"{where}: {message}")


def _parser() -> etree.XMLParser:
    return etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False,
                           dtd_validation=False, huge_tree=False, remove_comments=False)


def _as_bytes(text: str | bytes) -> bytes:
    if isinstance(text, str):
        # Drop an encoding declaration: the text is already decoded.
        return re.sub(r"^\s*<\?xml[^>]*\?>", "", text, count=1).encode("utf-8")
    if isinstance(text, bytes | bytearray | memoryview):
        return bytes(text)
    raise XMLError(f"expected XML text, got {type(text).__name__}")


def parse(text: str | bytes, source: str | None = None, max_bytes: int = MAX_BYTES):
    """Parse one document and return its root element, or raise XMLError."""
    data = _as_bytes(text)
    if len(data) > max_bytes:
        raise XMLError(f"document is {len(data)} bytes, more than the limit of {max_bytes}",
                       None, source)
    if not data.strip():
        raise XMLError("document is empty", 1, source)
    found = _DOCTYPE.search(data)
    if found:
        line = data.count(b"\n", 0, found.start()) + 1
        raise XMLError("DOCTYPE and ENTITY declarations are not allowed", line, source)
    try:
        root = etree.fromstring(data, _parser())
    except etree.XMLSyntaxError as exc:
        line = exc.lineno if exc.lineno else None
        raise XMLError(exc.msg or str(exc), line, source) from None
    if root is None:
        raise XMLError("document has no root element", 1, source)
    if root.getroottree().docinfo.doctype:
        raise XMLError("DOCTYPE declarations are not allowed", 1, source)
    return root
