"""pcloud.xmlsafe: hostile documents are refused with a line number, good ones parse."""

from __future__ import annotations

import pytest

from pcloud import protocol, xmlsafe
from pcloud.bus import MethodError

BILLION_LAUGHS = """<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
]>
<lolz>&lol3;</lolz>
"""

EXTERNAL_ENTITY = """<?xml version="1.0"?>
<!DOCTYPE foo [ <!ENTITY xxe SYSTEM "file:///etc/passwd"> ]>
<foo>&xxe;</foo>
"""


def test_parses_a_plain_document():
    root = xmlsafe.parse('<deployable name="dep1"><assemblies/></deployable>')
    assert root.tag == "deployable" and root.get("name") == "dep1"


def test_accepts_bytes_and_text_with_an_encoding_declaration():
    text = '<?xml version="1.0" encoding="UTF-8"?>\n<a b="é"/>'
    assert xmlsafe.parse(text).get("b") == "é"
    assert xmlsafe.parse(text.encode("utf-8")).get("b") == "é"


def test_billion_laughs_is_refused_at_the_doctype_line():
    with pytest.raises(xmlsafe.XMLError) as info:
        xmlsafe.parse(BILLION_LAUGHS, source="bomb.xml")
    assert info.value.line == 2
    assert "DOCTYPE" in info.value.message
    assert str(info.value).startswith("bomb.xml:2:")


def test_external_entity_is_refused():
    with pytest.raises(xmlsafe.XMLError) as info:
        xmlsafe.parse(EXTERNAL_ENTITY.encode())
    assert info.value.line == 2


def test_a_bare_doctype_is_refused():
    with pytest.raises(xmlsafe.XMLError, match="DOCTYPE"):
        xmlsafe.parse('<!DOCTYPE html>\n<html/>')


def test_undeclared_entity_reference_is_an_error_not_an_expansion():
    with pytest.raises(xmlsafe.XMLError) as info:
        xmlsafe.parse("<a>\n\n&xxe;</a>")
    assert info.value.line == 3


def test_oversize_document_is_refused_before_parsing():
    big = "<a>" + "x" * 2000 + "</a>"
    with pytest.raises(xmlsafe.XMLError, match="limit of 1000"):
        xmlsafe.parse(big, max_bytes=1000)
    with pytest.raises(xmlsafe.XMLError, match="limit"):
        xmlsafe.parse("<a>" + "x" * (1024 * 1024) + "</a>")


def test_malformed_document_reports_its_line():
    with pytest.raises(xmlsafe.XMLError) as info:
        xmlsafe.parse("<a>\n<b>\n</a>", source="bad.xml")
    assert info.value.line == 3
    assert info.value.source == "bad.xml"


def test_empty_document_is_refused():
    with pytest.raises(xmlsafe.XMLError, match="empty"):
        xmlsafe.parse("  ")


def test_response_round_trip():
    ok = protocol.ok_response('<deployable name="d" state="starting"/>')
    assert protocol.parse_response(ok).get("state") == "starting"
    assert protocol.parse_response(protocol.ok_response(None)) is None
    with pytest.raises(MethodError) as info:
        protocol.parse_response(protocol.error_response("not_found", "no such deployable", 2))
    assert (info.value.code, info.value.message, info.value.rc) == (
        "not_found", "no such deployable", 2)


def test_response_that_is_not_xml_is_a_method_error():
    with pytest.raises(MethodError) as info:
        protocol.parse_response("<response rc='0'")
    assert info.value.code == "malformed_response"
