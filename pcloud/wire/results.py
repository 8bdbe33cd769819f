"""What a guest agent tells its DPE about a resource: ``<op_result>``, the answer to a
``<resource_op>``, and ``<report>``, published on ``pcloud.report.<dep>.<asm>`` when a
resource changed without anyone asking (a recurring monitor's rc, a process's exit).

Both carry an OCF return code, a reason and the tail of the resource's output. Their
readers accept nothing ``schemas/op_result.rng`` and ``schemas/report.rng`` refuse: the DPE
acts on them, and they come from a machine it does not trust.
"""

from __future__ import annotations

from dataclasses import dataclass

from lxml import etree

from pcloud.wire import MAX_TEXT, check

OP_RESULT = "op_result"
REPORT = "report"
STATUSES = ("done", "timeout", "error")

_OP_RESULT_RULES: check.Rules = {
    "resource": (True, check.NAME_RULE), "operation": (True, check.OPERATION_RULE),
    "interval": (False, check.UINT_RULE), "rc": (True, check.signed),
    "status": (True, check.one_of(*STATUSES)), "time": (True, check.TIME_RULE),
    "duration_ms": (False, check.UINT_RULE), "reason": (False, check.text)}
_REPORT_RULES: check.Rules = {
    "deployable": (True, check.NAME_RULE), "assembly": (True, check.NAME_RULE),
    "resource": (True, check.NAME_RULE), "operation": (True, check.OPERATION_RULE),
    "interval": (False, check.UINT_RULE), "rc": (True, check.signed),
    "time": (True, check.TIME_RULE), "reason": (False, check.text),
    "uuid": (False, check.UUID_RULE)}


@dataclass(frozen=True)
class OpResult:
    """The outcome of one operation: ``rc`` an OCF code, ``status`` whether it ran to its
    end (``done``), ran out of time or could not run (``error``). Text is XML-safe
    (resource output can be anything: the agent cleans it); ``reason`` is cut to
    MAX_TEXT."""

    resource: str
    operation: str
    rc: int
    time: str
    status: str = "done"
    interval: int | None = None
    duration_ms: int | None = None
    reason: str | None = None
    output: str | None = None

    @classmethod
    def from_xml(cls, root: etree._Element) -> OpResult:
        """The result in ``root``, or WireError saying what the schema would refuse."""
        check.element(root, OP_RESULT, _OP_RESULT_RULES)
        a = root.attrib
        return cls(a["resource"], a["operation"], int(a["rc"]), a["time"], a["status"],
                   _uint(a.get("interval")), _uint(a.get("duration_ms")), a.get("reason"),
                   check.output(root))

    def to_xml(self) -> etree._Element:
        elem = etree.Element(OP_RESULT, resource=self.resource, operation=self.operation)
        _set(elem, "interval", self.interval)
        elem.set("rc", str(self.rc))
        elem.set("status", self.status)
        elem.set("time", self.time)
        _set(elem, "duration_ms", self.duration_ms)
        return _text(elem, self.reason, self.output)


@dataclass(frozen=True)
class Report:
    """A resource's rc changed on its own (``operation`` the source, a monitor for all
    but tests); ``uuid`` the assembly's, which the DPE checks. Text as in OpResult."""

    deployable: str
    assembly: str
    resource: str
    rc: int
    time: str
    operation: str = "monitor"
    interval: int | None = None
    uuid: str | None = None
    reason: str | None = None
    output: str | None = None

    @classmethod
    def from_xml(cls, root: etree._Element) -> Report:
        """The report in ``root``, or WireError saying what the schema would refuse."""
        check.element(root, REPORT, _REPORT_RULES)
        a = root.attrib
        return cls(a["deployable"], a["assembly"], a["resource"], int(a["rc"]), a["time"],
                   a["operation"], _uint(a.get("interval")), a.get("uuid"), a.get("reason"),
                   check.output(root))

    def to_xml(self) -> etree._Element:
        elem = etree.Element(REPORT, deployable=self.deployable, assembly=self.assembly,
                             resource=self.resource, operation=self.operation)
        _set(elem, "interval", self.interval)
        elem.set("rc", str(self.rc))
        elem.set("time", self.time)
        if self.uuid is not None:
            elem.set("uuid", self.uuid)
        return _text(elem, self.reason, self.output)


def _uint(value: str | None) -> int | None:
    return None if value is None else int(value)


def _set(elem: etree._Element, name: str, value: int | None) -> None:
    if value is not None:
        elem.set(name, str(value))


def _text(elem: etree._Element, reason: str | None, output: str | None) -> etree._Element:
    """The reason (cut to MAX_TEXT) and the ``<output>`` child, each only when not empty."""
    if reason:
        elem.set("reason", reason[:MAX_TEXT])
    if output:
        etree.SubElement(elem, "output").text = output
    return elem
