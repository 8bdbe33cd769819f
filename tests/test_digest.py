"""Op digests: Pacemaker's serialization quirks, byte for byte."""

import hashlib

from dpe_agent.digest import digest_string, escape_value, op_digest


def test_digest_string_is_sorted_childless_parameters_element():
    assert digest_string({"b": "2", "a": "1"}) == ' <parameters a="1" b="2"/>\n'
    assert digest_string({}) == " <parameters/>\n"


def test_escaping_of_markup_quotes_tab_and_newline():
    assert escape_value("a&b<c>d\"e'f") == "a&amp;b&lt;c&gt;d&quot;e&apos;f"
    assert escape_value("x\ty") == "x    y"
    assert escape_value("l1\nl2") == "l1\\nl2"


def test_no_escaping_after_first_non_ascii_character():
    # Pacemaker 2.1.5 copies the rest of a value verbatim after a non-ASCII byte.
    assert escape_value("a&é&<'") == "a&amp;é&<'"


def test_recurring_digest_covers_the_timeout():
    params = {"config": "/etc/my.cnf"}
    text = ' <parameters CRM_meta_timeout="20000" config="/etc/my.cnf"/>\n'
    assert op_digest(params, interval_ms=5000) == hashlib.md5(text.encode()).hexdigest()
    assert op_digest(params, interval_ms=5000) != op_digest(params, interval_ms=5000,
                                                           timeout_ms=30000)
    assert op_digest(params) == hashlib.md5(
        b' <parameters config="/etc/my.cnf"/>\n').hexdigest()
