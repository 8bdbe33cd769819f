"""Pacemaker's transition graph: the model both transition computers produce.

A graph is a set of synapses; each holds one action and the actions it waits for. The
executor runs an action once everything it waits for is done (``ready``). The normalized
form (actions and ordering edges by name, no ids) is what the differential tests compare,
since the two engines number actions differently.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from lxml import etree

KINDS = ("rsc_op", "pseudo_event", "crm_event")
GRAPH_DEFAULTS = {
    "cluster-delay": "60s", "stonith-timeout": "60s", "failed-stop-offset": "INFINITY",
    "failed-start-offset": "1", "batch-limit": "0",
}


@dataclass
class Action:
    """One graph action: a resource op, a pseudo event or a cluster event (fence, clear)."""

    id: int
    kind: str
    operation: str
    operation_key: str = ""
    resource: str | None = None
    node: str | None = None
    node_uuid: str | None = None
    rsc_class: str | None = None
    provider: str | None = None
    rsc_type: str | None = None
    attributes: dict[str, str] = field(default_factory=dict)
    downed: list[str] = field(default_factory=list)   # node uuids a stonith takes down
    priority: int = 0

    @property
    def interval_ms(self) -> int:
        return int(self.attributes.get("CRM_meta_interval", "0"))

    @property
    def timeout_ms(self) -> int:
        return int(self.attributes.get("CRM_meta_timeout", "20000"))

    @property
    def target_rc(self) -> int:
        return int(self.attributes.get("CRM_meta_op_target_rc", "0"))

    @property
    def parameters(self) -> dict[str, str]:
        """The resource's instance parameters (meta attributes left out)."""
        return {k: v for k, v in self.attributes.items()
                if not k.startswith("CRM_meta_") and k != "crm_feature_set"}

    @property
    def is_probe(self) -> bool:
        return self.kind == "rsc_op" and self.operation == "monitor" and self.interval_ms == 0

    @property
    def name(self) -> str:
        """Stable name for comparisons: the operation key and where it runs."""
        if self.kind == "pseudo_event":
            return f"pseudo {self.operation_key}"
        if self.kind == "crm_event":
            key = self.operation_key or self.operation
            return f"{key} {self.node}"
        if self.operation == "cancel":
            return f"cancel {self.operation_key} {self.node}"
        return f"{self.operation_key} {self.node}"

    # -- XML --------------------------------------------------------------------------
    def _head(self) -> dict[str, str]:
        head = {"id": str(self.id), "operation": self.operation}
        if self.operation_key:
            head["operation_key"] = self.operation_key
        if self.node is not None:
            head["on_node"] = self.node
        if self.node_uuid is not None:
            head["on_node_uuid"] = self.node_uuid
        return head

    def to_element(self, full: bool = True) -> etree._Element:
        elem = etree.Element(self.kind, self._head())
        if not full:
            return elem
        if self.kind == "rsc_op" and self.resource is not None:
            prim = {"id": self.resource, "class": self.rsc_class or ""}
            if self.provider:
                prim["provider"] = self.provider
            prim["type"] = self.rsc_type or ""
            etree.SubElement(elem, "primitive", prim)
        attrs = etree.SubElement(elem, "attributes")
        for key in sorted(self.attributes):
            attrs.set(key, self.attributes[key])
        if self.downed:
            downed = etree.SubElement(elem, "downed")
            for uuid in self.downed:
                etree.SubElement(downed, "node", id=uuid)
        return elem

    @classmethod
    def from_element(cls, elem: etree._Element) -> Action:
        prim = elem.find("primitive")
        attrs = elem.find("attributes")
        attributes = dict(attrs.attrib) if attrs is not None else {}
        resource = prim.get("id") if prim is not None else None
        key = elem.get("operation_key", "")
        if resource is None and elem.tag == "crm_event" and key.endswith("_clear_failcount_0"):
            resource = key[:-len("_clear_failcount_0")]
        elif resource is None and elem.tag == "pseudo_event" and key.count("_") >= 2:
            resource = key.rsplit("_", 2)[0]
        return cls(
            id=int(elem.get("id")), kind=elem.tag, operation=elem.get("operation", ""),
            operation_key=elem.get("operation_key", ""), resource=resource,
            node=elem.get("on_node"), node_uuid=elem.get("on_node_uuid"),
            rsc_class=prim.get("class") if prim is not None else None,
            provider=prim.get("provider") if prim is not None else None,
            rsc_type=prim.get("type") if prim is not None else None,
            attributes=attributes,
            downed=[n.get("id") for n in elem.iterfind("downed/node")],
        )


@dataclass
class Synapse:
    """One action and the ids of the actions it waits for."""

    id: int
    action: Action
    inputs: list[int] = field(default_factory=list)
    priority: int = 0


class TransitionGraph:
    """A parsed or computed transition graph."""

    def __init__(self, synapses: Iterable[Synapse] = (), *, transition_id: int = 0,
                 recheck_by: int | None = None, attributes: dict[str, str] | None = None):
        self.synapses: list[Synapse] = list(synapses)
        self.transition_id = transition_id
        self.recheck_by = recheck_by
        self.attributes = dict(GRAPH_DEFAULTS if attributes is None else attributes)
        self._index()

    def _index(self) -> None:
        self.by_id: dict[int, Action] = {s.action.id: s.action for s in self.synapses}
        self.dependencies: dict[int, frozenset[int]] = {
            s.action.id: frozenset(s.inputs) for s in self.synapses}

    @property
    def actions(self) -> list[Action]:
        return [s.action for s in self.synapses]

    def __len__(self) -> int:
        return len(self.synapses)

    def ready(self, done_ids: Iterable[int]) -> list[Action]:
        """Actions not done yet whose prerequisites all are."""
        done = set(done_ids)
        return [self.by_id[aid] for aid, deps in self.dependencies.items()
                if aid not in done and deps <= done]

    # -- comparison -------------------------------------------------------------------
    def normalized(self) -> tuple[frozenset[str], frozenset[tuple[str, str]]]:
        """(action names, ordering edges ``(before, after)``), ids and numbering ignored."""
        names = {aid: action.name for aid, action in self.by_id.items()}
        edges = set()
        for aid, deps in self.dependencies.items():
            for dep in deps:
                before = names.get(dep)
                if before is not None:
                    edges.add((before, names[aid]))
        return frozenset(names.values()), frozenset(edges)

    def summary_lines(self) -> list[str]:
        """Human-readable normalized form: sorted ``action:``, ``edge:`` and recheck lines."""
        actions, edges = self.normalized()
        lines = [f"action: {a}" for a in sorted(actions)]
        lines += [f"edge: {a} -> {b}" for a, b in sorted(edges)]
        if self.recheck_by is not None:
            lines.append(f"recheck-by: {self.recheck_by}")
        return lines

    # -- XML --------------------------------------------------------------------------
    def to_element(self) -> etree._Element:
        root = etree.Element("transition_graph")
        for key, value in self.attributes.items():
            root.set(key, value)
        root.set("transition_id", str(self.transition_id))
        if self.recheck_by is not None:
            root.set("recheck-by", str(self.recheck_by))
        for syn in self.synapses:
            selem = etree.SubElement(root, "synapse", id=str(syn.id))
            if syn.priority:
                selem.set("priority", str(syn.priority))
            aset = etree.SubElement(selem, "action_set")
            aset.append(syn.action.to_element())
            inputs = etree.SubElement(selem, "inputs")
            for dep in syn.inputs:
                trigger = etree.SubElement(inputs, "trigger")
                trigger.append(self.by_id[dep].to_element(full=False))
        return root

    def to_xml(self) -> str:
        return etree.tostring(self.to_element(), pretty_print=True, encoding="unicode")

    @classmethod
    def from_element(cls, root: etree._Element) -> TransitionGraph:
        if root.tag != "transition_graph":
            raise ValueError(f"expected <transition_graph>, got <{root.tag}>")
        synapses = []
        for selem in root.iterfind("synapse"):
            action_elem = next(iter(selem.find("action_set")))
            inputs = [int(t[0].get("id")) for t in selem.iterfind("inputs/trigger") if len(t)]
            synapses.append(Synapse(int(selem.get("id")), Action.from_element(action_elem),
                                    inputs, int(selem.get("priority", "0"))))
        attrs = {k: v for k, v in root.attrib.items()
                 if k not in ("transition_id", "recheck-by")}
        recheck = root.get("recheck-by")
        return cls(synapses, transition_id=int(root.get("transition_id", "0")),
                   recheck_by=int(recheck) if recheck else None, attributes=attrs)

    @classmethod
    def from_xml(cls, text: str | bytes) -> TransitionGraph:
        if isinstance(text, str):
            text = text.encode("utf-8")
        parser = etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=False)
        return cls.from_element(etree.fromstring(text, parser))
