"""``<resource_op>``: what a DPE asks of its guest agent in ``resource_start``,
``resource_stop``, ``resource_monitor`` and ``resource_cancel``.

The request names the whole resource, so the agent needs no configuration of its own. The
agent reads it with :meth:`ResourceOp.from_xml`, which accepts exactly what
``schemas/resource_op.rng`` accepts (tests/test_agent_units.py runs both on the same
documents) without compiling the grammar (1.2 MiB of the agent's RSS, issue 13).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from lxml import etree

from pcloud.wire import check
from pcloud.wire.check import WireError

TAG = "resource_op"
CLASSES = ("ocf", "lsb", "systemd", "process")

_OP_RULES: check.Rules = {"operation": (True, check.OPERATION_RULE),
                          "interval": (False, check.UINT_RULE),
                          "timeout": (False, check.integer(1))}
_RESOURCE_RULES: check.Rules = {"name": (True, check.NAME_RULE),
                                "class": (True, check.one_of(*CLASSES)),
                                "provider": (False, check.NAME_RULE),
                                "type": (False, check.pattern(r"[A-Za-z0-9_.@:\-]{1,128}"))}
_PARAMETER_RULES: check.Rules = {"name": (True, check.pattern(r"[A-Za-z0-9_.\-]{1,128}")),
                                 "value": (True, check.text)}
_PROBE_RULES: check.Rules = {
    "kind": (True, check.one_of("http", "tcp", "exec")),
    "url": (False, check.pattern(r"https?://[^ \t\n\r]{1,2040}")),
    "expect_status": (False, check.integer(100, 599)),
    "host": (False, check.pattern(r"[A-Za-z0-9_.:\-]{1,255}")),
    "port": (False, check.integer(1, 65535)), "command": (False, check.text),
    "interval": (False, check.seconds), "timeout": (False, check.seconds),
    "failures": (False, check.integer(1))}


@dataclass(frozen=True)
class ResourceDef:
    """One service of a deployable as its guest agent gets it (``<resource>``).

    ``probe`` holds the ``<probe>`` attributes as the deployable document spells them
    (:class:`pcloud.deployable.Probe` writes them, the agent reads them into its own probe
    spec): the wire only carries them, checked.
    """

    name: str
    cls: str
    provider: str | None = None
    type: str | None = None
    params: Mapping[str, str] = field(default_factory=dict)
    probe: Mapping[str, str] | None = None

    @classmethod
    def from_xml(cls, elem: etree._Element) -> ResourceDef:
        """The resource in ``elem``, or WireError saying what the schema would refuse."""
        check.attributes(elem, _RESOURCE_RULES)
        params: dict[str, str] = {}
        probe: dict[str, str] | None = None
        seen: set[str] = set()
        for child in check.children(elem):
            if child.tag not in ("parameters", "probe") or child.tag in seen:
                raise WireError(f"<resource> may hold one <parameters> and one <probe>, "
                                f"not <{child.tag}> here")
            seen.add(child.tag)
            if child.tag == "probe":
                check.attributes(child, _PROBE_RULES)
                if check.children(child):
                    raise WireError("<probe> is empty")
                probe = dict(child.attrib)
                continue
            check.attributes(child, {})
            for parameter in check.children(child):
                if parameter.tag != "parameter":
                    raise WireError(f"<parameters> holds <parameter> only, not "
                                    f"<{parameter.tag}>")
                check.attributes(parameter, _PARAMETER_RULES)
                if check.children(parameter):
                    raise WireError("<parameter> is empty")
                params[parameter.get("name")] = parameter.get("value")
        return cls(elem.get("name"), elem.get("class"), elem.get("provider"), elem.get("type"),
                   params, probe)

    def to_xml(self) -> etree._Element:
        attrs = {"name": self.name, "class": self.cls}
        if self.provider:
            attrs["provider"] = self.provider
        if self.type:
            attrs["type"] = self.type
        elem = etree.Element("resource", attrs)
        if self.params:
            plist = etree.SubElement(elem, "parameters")
            for key in sorted(self.params):
                etree.SubElement(plist, "parameter", name=key, value=self.params[key])
        if self.probe is not None:
            etree.SubElement(elem, "probe", dict(self.probe))
        return elem


@dataclass(frozen=True)
class ResourceOp:
    """One operation on one resource. ``interval`` (ms) above 0 on a monitor makes it
    recurring, on a cancel names the monitor to stop; ``timeout`` (ms) None: the agent's
    default."""

    operation: str
    resource: ResourceDef
    interval: int = 0
    timeout: int | None = None

    @classmethod
    def from_xml(cls, root: etree._Element) -> ResourceOp:
        """The operation in ``root``, or WireError saying what the schema would refuse."""
        check.element(root, TAG, _OP_RULES)
        found = check.children(root)
        if len(found) != 1 or found[0].tag != "resource":
            raise WireError("<resource_op> holds exactly one <resource>")
        timeout = root.get("timeout")
        return cls(root.get("operation"), ResourceDef.from_xml(found[0]),
                   int(root.get("interval", "0")), None if timeout is None else int(timeout))

    def to_xml(self) -> etree._Element:
        root = etree.Element(TAG, operation=self.operation, interval=str(self.interval))
        if self.timeout is not None:
            root.set("timeout", str(self.timeout))
        root.append(self.resource.to_xml())
        return root


def resource_name(root: etree._Element) -> str | None:
    """The name of the resource a ``<resource_op>`` operates on, unchecked (None: not one):
    the agent's bus orders requests by it before any handler reads them strictly."""
    if root.tag != TAG:
        return None
    resource = root.find("resource")
    return None if resource is None else resource.get("name") or None
