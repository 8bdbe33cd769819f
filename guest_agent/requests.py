"""A guest agent's side of the wire: ``<resource_op>`` requests into resource specs, results
and reports into their documents (:mod:`pcloud.wire.resource_op`,
:mod:`pcloud.wire.results`).

A request is read by :meth:`pcloud.wire.resource_op.ResourceOp.from_xml`, a strict reading of
``schemas/resource_op.rng`` that accepts nothing the schema refuses (tests/test_agent_units.py
runs both on the same documents): compiling the RelaxNG grammar cost the agent 1.2 MiB of RSS
(issue 13) for a document of a dozen attributes.
"""

from __future__ import annotations

from collections.abc import Mapping

from lxml import etree

from guest_agent.config import AgentConfig
from guest_agent.resources.base import OpResult, ProbeSpec, ResourceSpec, xml_text
from pcloud import wire
from pcloud.bus import MethodError
from pcloud.wire import results
from pcloud.wire.check import WireError
from pcloud.wire.resource_op import ResourceDef, ResourceOp

DEFAULT_TIMEOUT_MS = 20000
MAX_TIMEOUT_MS = 24 * 3600 * 1000


def parse_op(root: etree._Element, operation: str) -> tuple[ResourceSpec, int, float]:
    """A ``<resource_op>`` for method ``resource_<operation>`` → (spec, interval ms, timeout
    seconds); MethodError invalid_request, saying what is wrong, for one the schema refuses."""
    try:
        op = ResourceOp.from_xml(root)
    except WireError as exc:
        raise MethodError("invalid_request", str(exc)) from None
    if op.operation != operation:
        raise MethodError("invalid_request", f"operation {op.operation!r} does not "
                          f"match method resource_{operation}")
    timeout_ms = min(DEFAULT_TIMEOUT_MS if op.timeout is None else op.timeout, MAX_TIMEOUT_MS)
    return resource_spec(op.resource), op.interval, timeout_ms / 1000.0


def resource_spec(resource: ResourceDef) -> ResourceSpec:
    """The agent's spec of a resource the DPE described, with its probe."""
    probes = () if resource.probe is None else (parse_probe(resource.probe),)
    return ResourceSpec(name=resource.name, cls=resource.cls, type=resource.type or "",
                        provider=resource.provider or "", params=dict(resource.params),
                        probes=probes)


def parse_probe(attrs: Mapping[str, str]) -> ProbeSpec:
    """``<probe kind=http url|tcp host port|exec command interval timeout failures>``."""
    kind = attrs.get("kind", "")
    needs = {"http": "url", "tcp": "port", "exec": "command"}.get(kind)
    if needs is None:
        raise MethodError("invalid_request", f"probe kind {kind!r} is not http, tcp or exec")
    if not attrs.get(needs):
        raise MethodError("invalid_request", f"a {kind} probe needs attribute {needs}")
    target = attrs.get(needs, "")
    if kind == "tcp":
        target = f"{attrs.get('host', '127.0.0.1')}:{target}"
    try:
        interval = float(attrs.get("interval", "1"))
        timeout = float(attrs.get("timeout", str(min(interval, 1.0))))
        failures = int(attrs.get("failures", "1"))
        expect = attrs.get("expect_status")
        expect_status = int(expect) if expect else None
    except ValueError as exc:
        raise MethodError("invalid_request", f"probe: {exc}") from None
    if interval <= 0 or timeout <= 0 or failures < 1:
        raise MethodError("invalid_request", "probe interval, timeout and failures must be > 0")
    return ProbeSpec(kind=kind, interval=interval, timeout=timeout, target=target,
                     failures=failures, expect_status=expect_status)


def op_result(name: str, operation: str, interval: int, result: OpResult) -> etree._Element:
    """``<op_result>``: the answer to a resource operation."""
    return results.OpResult(name, operation, result.rc, wire.now(), result.status, interval,
                            max(0, result.duration_ms), xml_text(result.reason) or None,
                            xml_text(result.output) or None).to_xml()


def report(config: AgentConfig, name: str, interval: int, result: OpResult,
           operation: str = "monitor") -> etree._Element:
    """``<report>``: a resource's state changed without anyone asking."""
    return results.Report(config.deployable, config.assembly, name, result.rc, wire.now(),
                          operation, interval, config.uuid, xml_text(result.reason) or None,
                          xml_text(result.output) or None).to_xml()
