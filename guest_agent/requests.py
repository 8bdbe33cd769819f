"""Reading ``<resource_op>`` requests into resource specs, and writing results as XML."""

from __future__ import annotations

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


def validate(root: etree._Element, schema: str) -> None:
    """Check a request against its RelaxNG schema; MethodError invalid_request if it fails."""
    from pcloud import schemas
    from pcloud.xmlsafe import XMLError

    try:
        schemas.validate(root, schema)
    except XMLError as exc:
        raise MethodError("invalid_request", str(exc)) from None


def parse_op(root: etree._Element, operation: str) -> tuple[ResourceSpec, int, float]:
    """A validated ``<resource_op>`` → (spec, interval ms, timeout seconds)."""
    if root.tag != "resource_op":
        raise MethodError("invalid_request", f"expected <resource_op>, got <{root.tag}>")
    validate(root, "resource_op")
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
