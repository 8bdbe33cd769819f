"""Response bodies of method calls (DESIGN §3): build them and read them back.

``<response rc="0">result</response>`` or
``<response rc="N"><error code="WORD" message="sentence"/></response>``.
"""

from __future__ import annotations

from lxml import etree

from pcloud import xmlsafe
from pcloud.bus.errors import MethodError


def ok_response(result: etree._Element | str | None = None) -> str:
    """Wrap a result element (or its XML text, or nothing) in a success response."""
    root = etree.Element("response", rc="0")
    if isinstance(result, str):
        result = xmlsafe.parse(result, source="result")
    if result is not None:
        root.append(result)
    return etree.tostring(root, encoding="unicode")


def error_response(code: str, message: str, rc: int = 1) -> str:
    """An error response; ``rc`` must not be 0."""
    if rc == 0:
        rc = 1
    root = etree.Element("response", rc=str(rc))
    etree.SubElement(root, "error", code=code, message=message)
    return etree.tostring(root, encoding="unicode")


def parse_response(text: str | bytes) -> etree._Element | None:
    """Return the result element of a success response (None when empty).

    Raises MethodError for an error response, and ``malformed_response`` when the text is
    not a response at all.
    """
    try:
        root = xmlsafe.parse(text, source="response")
    except xmlsafe.XMLError as exc:
        raise MethodError("malformed_response", f"response is not valid XML: {exc}") from None
    if root.tag != "response":
        raise MethodError("malformed_response", f"expected <response>, got <{root.tag}>")
    try:
        rc = int(root.get("rc", ""))
    except ValueError:
        raise MethodError("malformed_response", "response has no integer rc") from None
    children = [child for child in root if isinstance(child.tag, str)]
    if rc != 0:
        error = root.find("error")
        if error is None:
            raise MethodError("unknown_error", f"call failed with rc={rc}", rc)
        raise MethodError(error.get("code", "unknown_error"),
                          error.get("message", "no message given"), rc)
    return children[0] if children else None
