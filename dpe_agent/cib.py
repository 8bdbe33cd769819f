"""Build a Pacemaker CIB from a deployable document and the observed state.

The configuration section comes from the deployable by XSLT (``xml/deployable-to-cib.xsl``)
so the mapping stays declarative and reviewable; the status section is written here from
:class:`~dpe_agent.observed.ObservedState` in Pacemaker's ``node_state`` / ``lrm_rsc_op``
vocabulary. Pure: no I/O besides loading the stylesheet once, the clock is a parameter.
"""

from __future__ import annotations

import re
from datetime import datetime
from functools import lru_cache

from lxml import etree

from dpe_agent.observed import (
    AssemblyObserved,
    AssemblyStatus,
    ObservedState,
    OpRecord,
    ResourceHistory,
)
from pcloud.paths import data_file

FEATURE_SET = "3.16.1"
_NCNAME = re.compile(r"^[A-Za-z_][A-Za-z0-9._-]*$")


@lru_cache(maxsize=1)
def _stylesheet() -> etree.XSLT:
    parser = etree.XMLParser(resolve_entities=False, no_network=True)
    return etree.XSLT(etree.parse(str(data_file("xml", "deployable-to-cib.xsl")), parser))


def rsc_id(assembly: str, service: str) -> str:
    """CIB id of a service: ``<assembly>.<service>`` (names never contain a dot)."""
    return f"{assembly}.{service}"


def split_rsc_id(resource: str) -> tuple[str, str]:
    """Inverse of :func:`rsc_id`: ``(assembly, service)``."""
    assembly, _, service = resource.partition(".")
    return assembly, service


def build_configuration(deployable_root: etree._Element, *, escalation: bool = False,
                        stop_all: bool = False) -> etree._Element:
    """The ``<cib>`` element with its configuration and an empty status section.

    ``escalation`` maps the services' escalation attributes to ``migration-threshold`` /
    ``failure-timeout``. The DPE leaves it off: it escalates itself (resource, assembly,
    deployable), and the engine stopping a resource at the threshold would pre-empt that.
    ``stop_all`` gives every resource ``target-role=Stopped``: the graph of a full stop.
    """
    if deployable_root.tag != "deployable":
        raise ValueError(f"expected a <deployable> document, got <{deployable_root.tag}>")
    params = {"escalation": etree.XSLT.strparam("1" if escalation else "0"),
              "target-role": etree.XSLT.strparam("Stopped" if stop_all else "")}
    cib = _stylesheet()(etree.ElementTree(deployable_root), **params).getroot()
    ids = cib.xpath("configuration/resources/primitive/@id")
    if not all(_NCNAME.match(i) for i in ids):
        # Pacemaker's schema wants XML ids; names starting with a digit are valid for pcloud.
        cib.set("validate-with", "none")
    return cib


def build_cib(deployable_root: etree._Element, observed: ObservedState, *,
              now: datetime | None = None, escalation: bool = False,
              stop_all: bool = False) -> etree._Element:
    """A full CIB (configuration + status) for a transition computer.

    ``escalation`` and ``stop_all``: see :func:`build_configuration`.
    """
    cib = build_configuration(deployable_root, escalation=escalation, stop_all=stop_all)
    if now is not None:
        cib.set("execution-date", str(int(now.timestamp())))
    status = cib.find("status")
    for node in cib.iterfind("configuration/nodes/node"):
        uname, uuid = node.get("uname"), node.get("id")
        asm = observed.assemblies.get(uname) or AssemblyObserved(uname)
        status.append(node_state(asm, uuid))
    return cib


def node_state(asm: AssemblyObserved, uuid: str) -> etree._Element:
    """``<node_state>`` of one assembly; a fenced assembly has no history and no attributes."""
    state = etree.Element("node_state", id=uuid, uname=asm.name)
    if asm.status is AssemblyStatus.ONLINE:
        state.attrib.update({"in_ccm": "true", "crmd": "online", "join": "member",
                             "expected": "member"})
    elif asm.status is AssemblyStatus.LOST:
        state.attrib.update({"in_ccm": "false", "crmd": "offline", "join": "down",
                             "expected": "member"})
    else:
        state.attrib.update({"in_ccm": "false", "crmd": "offline", "join": "down",
                             "expected": "down"})
        return state
    attrs = _transient_attributes(asm, uuid)
    if attrs is not None:
        state.append(attrs)
    lrm = etree.SubElement(state, "lrm", id=uuid)
    resources = etree.SubElement(lrm, "lrm_resources")
    for hist in asm.resources.values():
        resources.append(_lrm_resource(hist, asm.name))
    return state


def _transient_attributes(asm: AssemblyObserved, uuid: str) -> etree._Element | None:
    pairs = []
    for hist in asm.resources.values():
        for key, count in hist.fail_counts.items():
            op, _, interval = key.rpartition("_")
            suffix = f"{hist.rsc_id}#{op}_{interval}"
            pairs.append((f"fail-count-{suffix}", str(count)))
            epoch = hist.last_failures.get(key)
            if epoch is not None:
                pairs.append((f"last-failure-{suffix}", str(epoch)))
    if not pairs:
        return None
    top = etree.Element("transient_attributes", id=uuid)
    inst = etree.SubElement(top, "instance_attributes", id=f"status-{uuid}")
    for name, value in pairs:
        nv_id = f"status-{uuid}-{name.replace('#', '.')}"
        etree.SubElement(inst, "nvpair", id=nv_id, name=name, value=value)
    return top


def _lrm_resource(hist: ResourceHistory, node: str) -> etree._Element:
    attrs = {"id": hist.rsc_id, "class": hist.rsc_class}
    if hist.provider:
        attrs["provider"] = hist.provider
    attrs["type"] = hist.rsc_type
    elem = etree.Element("lrm_resource", attrs)
    if hist.last is not None:
        elem.append(_rsc_op(f"{hist.rsc_id}_last_0", hist.rsc_id, hist.last, node))
    if hist.last_failure is not None:
        elem.append(_rsc_op(f"{hist.rsc_id}_last_failure_0", hist.rsc_id, hist.last_failure,
                            node))
    for interval in sorted(hist.monitors):
        op = hist.monitors[interval]
        elem.append(_rsc_op(f"{hist.rsc_id}_monitor_{interval}", hist.rsc_id, op, node))
    return elem


def _rsc_op(op_id: str, rsc: str, op: OpRecord, node: str) -> etree._Element:
    # Only what the scheduler reads (timings, magic and origin change nothing: measured).
    elem = etree.Element("lrm_rsc_op", {
        "id": op_id,
        "operation_key": f"{rsc}_{op.operation}_{op.interval_ms}",
        "operation": op.operation,
        "transition-key": op.transition_key,
        "on_node": node,
        "call-id": str(op.call_id),
        "rc-code": str(op.rc),
        "op-status": str(op.op_status),
        "interval": str(op.interval_ms),
        "last-rc-change": str(op.epoch),
    })
    if op.digest:
        elem.set("op-digest", op.digest)
    return elem
