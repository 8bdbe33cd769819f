"""Strict readings of the wire's small documents: the attribute rules of ``schemas/*.rng``
stated once in plain Python.

A guest agent reads its requests with them instead of a RelaxNG run (compiling the grammar
cost it 1.2 MiB of RSS, issue 13), and every reader of this package accepts nothing its
schema refuses (tests/test_wire.py and tests/test_agent_units.py run both on the same
documents). A rule may refuse more than its schema (no blanks around an integer, at most a
dozen digits): pcloud never writes those. Datatypes are the ones of ``schemas/common.rng``.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from lxml import etree

from pcloud.wire import MAX_TEXT, NAME

Rule = Callable[[str], bool]
#: attribute name -> (required, rule of its value)
Rules = dict[str, tuple[bool, Rule]]

_DIGITS = re.compile(r"[0-9]{1,12}")
_SIGNED = re.compile(r"-?[0-9]{1,12}")
_DECIMAL = re.compile(r"[0-9]{1,9}(\.[0-9]{1,9})?|\.[0-9]{1,9}")
_TIME = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,9})?"
                   r"(Z|[+\-][0-9]{2}:[0-9]{2})")
_UUID = re.compile(r"[^ \t\n\r]{1,64}")


class WireError(ValueError):
    """A document its reader refuses; the message says what is wrong."""


def pattern(regex: str | re.Pattern[str]) -> Rule:
    compiled = re.compile(regex)
    return lambda value: compiled.fullmatch(value) is not None


def one_of(*words: str) -> Rule:
    return lambda value: value in words


def integer(low: int, high: int | None = None) -> Rule:
    """``nonNegativeInteger`` (low 0), ``positiveInteger`` (low 1) or a bounded range."""
    return lambda value: (_DIGITS.fullmatch(value) is not None and int(value) >= low
                          and (high is None or int(value) <= high))


def signed(value: str) -> bool:
    """``integer``: OCF return codes."""
    return _SIGNED.fullmatch(value) is not None


def seconds(value: str) -> bool:
    """``seconds.type``: a decimal above 0."""
    return _DECIMAL.fullmatch(value) is not None and float(value) > 0


def text(value: str) -> bool:
    """``text.type``: at most MAX_TEXT characters."""
    return len(value) <= MAX_TEXT


NAME_RULE = pattern(NAME)
TIME_RULE = pattern(_TIME)
UUID_RULE = pattern(_UUID)
UINT_RULE = integer(0)
OPERATION_RULE = one_of("start", "stop", "monitor", "cancel")


def children(elem: etree._Element) -> list[etree._Element]:
    """The element children (comments and processing instructions are not content); any
    text around them is an error, as in the schema."""
    if (elem.text or "").strip():
        raise WireError(f"<{elem.tag}> has text content")
    found = []
    for child in elem:
        if (child.tail or "").strip():
            raise WireError(f"<{elem.tag}> has text content")
        if isinstance(child.tag, str):
            found.append(child)
    return found


def attributes(elem: etree._Element, rules: Rules) -> None:
    """Refuse an attribute the rules do not name, a value its rule refuses, a missing one."""
    for name, value in elem.attrib.items():
        rule = rules.get(name)
        if rule is None:
            raise WireError(f"<{elem.tag}> has no attribute {name!r}")
        if not rule[1](value):
            raise WireError(f"<{elem.tag}> attribute {name} has an invalid value {value[:80]!r}")
    for name, (required, _) in rules.items():
        if required and name not in elem.attrib:
            raise WireError(f"<{elem.tag}> needs attribute {name}")


def element(elem: etree._Element, tag: str, rules: Rules) -> None:
    """``elem`` is a ``<tag>`` whose attributes follow ``rules``."""
    if elem.tag != tag:
        raise WireError(f"expected <{tag}>, got <{elem.tag}>")
    attributes(elem, rules)


def output(elem: etree._Element) -> str | None:
    """The text of the optional ``<output>``, the only child of a result or a report."""
    found = children(elem)
    if not found:
        return None
    if len(found) > 1 or found[0].tag != "output":
        raise WireError(f"<{elem.tag}> holds one <output> at most")
    out = found[0]
    if out.attrib or any(isinstance(c.tag, str) for c in out):
        raise WireError("<output> holds text only")
    return out.text or ""
