"""Reading ``<resource_op>`` requests into resource specs, and writing results as XML.

A request is checked by :func:`check_resource_op`, a strict reading of
``schemas/resource_op.rng`` that accepts nothing the schema refuses (tests/test_agent_units.py
runs both on the same documents): compiling the RelaxNG grammar cost the agent 1.2 MiB of RSS
(issue 13) for a document of a dozen attributes.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime

from lxml import etree

from guest_agent.resources.base import OpResult, ProbeSpec, ResourceSpec, xml_text
from pcloud.bus import MethodError
from pcloud.wire import NAME

DEFAULT_TIMEOUT_MS = 20000
MAX_TIMEOUT_MS = 24 * 3600 * 1000
_NAME = NAME


def iso_now() -> str:
    """UTC time with milliseconds, as every pcloud document writes it."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


_DIGITS = re.compile(r"[0-9]{1,12}")
_DECIMAL = re.compile(r"[0-9]{1,9}(\.[0-9]{1,9})?|\.[0-9]{1,9}")
_PATTERNS = {
    "name": re.compile(r"[A-Za-z0-9_][A-Za-z0-9_\-]{0,63}"),
    "type": re.compile(r"[A-Za-z0-9_.@:\-]{1,128}"),
    "parameter": re.compile(r"[A-Za-z0-9_.\-]{1,128}"),
    "url": re.compile(r"https?://[^ \t\n\r]{1,2040}"),
    "host": re.compile(r"[A-Za-z0-9_.:\-]{1,255}"),
}
MAX_TEXT = 4096


def _pattern(kind: str) -> Callable[[str], bool]:
    return lambda value: _PATTERNS[kind].fullmatch(value) is not None


def _one_of(*words: str) -> Callable[[str], bool]:
    return lambda value: value in words


def _integer(low: int, high: int | None = None) -> Callable[[str], bool]:
    return lambda value: (_DIGITS.fullmatch(value) is not None and int(value) >= low
                          and (high is None or int(value) <= high))


def _seconds(value: str) -> bool:
    return _DECIMAL.fullmatch(value) is not None and float(value) > 0


def _text(value: str) -> bool:
    return len(value) <= MAX_TEXT


_OP_ATTRS = {"operation": (True, _one_of("start", "stop", "monitor", "cancel")),
             "interval": (False, _integer(0)), "timeout": (False, _integer(1))}
_RESOURCE_ATTRS = {"name": (True, _pattern("name")),
                   "class": (True, _one_of("ocf", "lsb", "systemd", "process")),
                   "provider": (False, _pattern("name")), "type": (False, _pattern("type"))}
_PARAMETER_ATTRS = {"name": (True, _pattern("parameter")), "value": (True, _text)}
_PROBE_ATTRS = {"kind": (True, _one_of("http", "tcp", "exec")), "url": (False, _pattern("url")),
                "expect_status": (False, _integer(100, 599)),
                "host": (False, _pattern("host")), "port": (False, _integer(1, 65535)),
                "command": (False, _text), "interval": (False, _seconds),
                "timeout": (False, _seconds), "failures": (False, _integer(1))}


def _invalid(message: str) -> MethodError:
    return MethodError("invalid_request", message)


def _children(elem: etree._Element) -> list[etree._Element]:
    """The element children (comments and processing instructions are not content); any
    text around them is an error, as in the schema."""
    if (elem.text or "").strip():
        raise _invalid(f"<{elem.tag}> has text content")
    children = []
    for child in elem:
        if (child.tail or "").strip():
            raise _invalid(f"<{elem.tag}> has text content")
        if isinstance(child.tag, str):
            children.append(child)
    return children


def _attributes(elem: etree._Element, allowed: dict[str, tuple[bool, Callable[[str], bool]]]
                ) -> None:
    for name, value in elem.attrib.items():
        rule = allowed.get(name)
        if rule is None:
            raise _invalid(f"<{elem.tag}> has no attribute {name!r}")
        if not rule[1](value):
            raise _invalid(f"<{elem.tag}> attribute {name} has an invalid value {value[:80]!r}")
    for name, (required, _) in allowed.items():
        if required and name not in elem.attrib:
            raise _invalid(f"<{elem.tag}> needs attribute {name}")


def check_resource_op(root: etree._Element) -> None:
    """Refuse (MethodError invalid_request, saying what is wrong) a ``<resource_op>`` that
    ``schemas/resource_op.rng`` would refuse."""
    if root.tag != "resource_op":
        raise _invalid(f"expected <resource_op>, got <{root.tag}>")
    _attributes(root, _OP_ATTRS)
    children = _children(root)
    if len(children) != 1 or children[0].tag != "resource":
        raise _invalid("<resource_op> holds exactly one <resource>")
    resource = children[0]
    _attributes(resource, _RESOURCE_ATTRS)
    seen: set[str] = set()
    for child in _children(resource):
        if child.tag not in ("parameters", "probe") or child.tag in seen:
            raise _invalid(f"<resource> may hold one <parameters> and one <probe>, "
                           f"not <{child.tag}> here")
        seen.add(child.tag)
        if child.tag == "probe":
            _attributes(child, _PROBE_ATTRS)
            if _children(child):
                raise _invalid("<probe> is empty")
            continue
        _attributes(child, {})
        for parameter in _children(child):
            if parameter.tag != "parameter":
                raise _invalid(f"<parameters> holds <parameter> only, not <{parameter.tag}>")
            _attributes(parameter, _PARAMETER_ATTRS)
            if _children(parameter):
                raise _invalid("<parameter> is empty")


def parse_op(root: etree._Element, operation: str) -> tuple[ResourceSpec, int, float]:
    """A validated ``<resource_op>`` → (spec, interval ms, timeout seconds)."""
    check_resource_op(root)
    if root.get("operation") != operation:
        raise MethodError("invalid_request", f"operation {root.get('operation')!r} does not "
                          f"match method resource_{operation}")
    interval = int(root.get("interval", "0"))
    timeout_ms = min(int(root.get("timeout", str(DEFAULT_TIMEOUT_MS))), MAX_TIMEOUT_MS)
    return parse_resource(root.find("resource")), interval, timeout_ms / 1000.0


def parse_resource(elem: etree._Element | None) -> ResourceSpec:
    """``<resource name class provider type>`` with parameters and probes."""
    if elem is None:
        raise MethodError("invalid_request", "<resource_op> has no <resource>")
    name = elem.get("name", "")
    if not _NAME.match(name):
        raise MethodError("invalid_request", f"resource name {name!r} is not valid")
    params: dict[str, str] = {}
    for param in elem.iterfind("parameters/parameter"):
        params[param.get("name", "")] = param.get("value", "")
    probes = tuple(parse_probe(p) for p in elem.iterfind("probe"))
    return ResourceSpec(name=name, cls=elem.get("class", ""), type=elem.get("type", ""),
                        provider=elem.get("provider", ""), params=params, probes=probes)


def parse_probe(elem: etree._Element) -> ProbeSpec:
    """``<probe kind=http url|tcp host port|exec command interval timeout failures>``."""
    kind = elem.get("kind", "")
    needs = {"http": "url", "tcp": "port", "exec": "command"}.get(kind)
    if needs is None:
        raise MethodError("invalid_request", f"probe kind {kind!r} is not http, tcp or exec")
    if not elem.get(needs):
        raise MethodError("invalid_request", f"a {kind} probe needs attribute {needs}")
    target = elem.get(needs, "")
    if kind == "tcp":
        target = f"{elem.get('host', '127.0.0.1')}:{target}"
    try:
        interval = float(elem.get("interval", "1"))
        timeout = float(elem.get("timeout", str(min(interval, 1.0))))
        failures = int(elem.get("failures", "1"))
        expect = elem.get("expect_status")
        expect_status = int(expect) if expect else None
    except ValueError as exc:
        raise MethodError("invalid_request", f"probe: {exc}") from None
    if interval <= 0 or timeout <= 0 or failures < 1:
        raise MethodError("invalid_request", "probe interval, timeout and failures must be > 0")
    return ProbeSpec(kind=kind, interval=interval, timeout=timeout, target=target,
                     failures=failures, expect_status=expect_status)


def op_result(name: str, operation: str, interval: int, result: OpResult) -> etree._Element:
    """``<op_result>`` as protocol.md describes it."""
    elem = etree.Element("op_result", resource=name, operation=operation,
                         interval=str(interval), rc=str(result.rc), status=result.status,
                         time=iso_now(), duration_ms=str(max(0, result.duration_ms)))
    if result.reason:
        elem.set("reason", xml_text(result.reason[:4096]))
    if result.output:
        etree.SubElement(elem, "output").text = xml_text(result.output)
    return elem


def report(deployable: str, assembly: str, uuid: str, name: str, interval: int, rc: int,
           reason: str, output: str, operation: str = "monitor") -> etree._Element:
    """``<report>``: a resource's state changed without anyone asking."""
    elem = etree.Element("report", deployable=deployable, assembly=assembly, resource=name,
                         operation=operation, interval=str(interval), rc=str(rc),
                         time=iso_now(), uuid=uuid)
    if reason:
        elem.set("reason", xml_text(reason[:4096]))
    if output:
        etree.SubElement(elem, "output").text = xml_text(output)
    return elem
