"""The native engine's view of a CIB: plain data read once from the XML.

Only the subset pcloud generates is understood (pinned primitives, orders, the placeholder
fence device, node_state / lrm history / fail-count attributes); everything is indexed so
the scheduler stays linear in the number of resources.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from lxml import etree

from dpe_agent.digest import DEFAULT_OP_TIMEOUT_MS

INFINITY = 1000000
_INTERVAL = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|msec|s|sec|m|min|h|hr)?\s*$", re.I)
_UNIT_MS = {None: 1000, "ms": 1, "msec": 1, "s": 1000, "sec": 1000, "m": 60000,
            "min": 60000, "h": 3600000, "hr": 3600000}


def parse_ms(text: str | None, default: int = 0) -> int:
    """A Pacemaker interval/timeout ("5000ms", "5s", "5", "1min") in milliseconds."""
    if text is None:
        return default
    match = _INTERVAL.match(text)
    if not match:
        return default
    unit = match.group(2).lower() if match.group(2) else None
    return int(float(match.group(1)) * _UNIT_MS[unit])


def parse_score(text: str | None) -> int:
    if text is None:
        return 0
    text = text.strip().upper()
    if text in ("INFINITY", "+INFINITY"):
        return INFINITY
    if text == "-INFINITY":
        return -INFINITY
    try:
        return max(-INFINITY, min(INFINITY, int(text)))
    except ValueError:
        return 0


def natural_key(name: str) -> list:
    """Pacemaker sorts node names naturally ("n2" before "n10")."""
    return [(0, int(part), "") if part.isdigit() else (1, 0, part.lower())
            for part in re.findall(r"\d+|\D+", name)]


@dataclass
class Primitive:
    id: str
    rsc_class: str
    provider: str | None
    rsc_type: str
    params: dict[str, str]
    monitors: dict[int, int]           # interval ms -> timeout ms
    migration_threshold: int = INFINITY
    failure_timeout: int = 0           # seconds
    home: str | None = None            # node uname with a positive location score
    stopped: bool = False              # meta target-role=Stopped: must not run anywhere


@dataclass
class Order:
    first: str
    then: str
    mandatory: bool


@dataclass
class HistOp:
    """One lrm_rsc_op entry."""

    operation: str
    interval_ms: int
    rc: int
    expected_rc: int
    op_status: int
    call_id: int
    digest: str | None
    last_rc_change: int | None
    is_last_failure: bool = False

    @property
    def failed(self) -> bool:
        return self.rc != self.expected_rc or self.op_status != 0


@dataclass
class LrmResource:
    id: str
    rsc_class: str
    provider: str | None
    rsc_type: str
    ops: list[HistOp]


@dataclass
class Node:
    uuid: str
    uname: str
    has_state: bool = False
    in_ccm: str | None = None          # node_state attributes, as written
    crmd: str | None = None
    join: str | None = None
    expected: str | None = None
    online: bool = False               # set by the scheduler's membership pass
    unclean: bool = False              # must be fenced before anything runs on it again
    resources: dict[str, LrmResource] = field(default_factory=dict)
    fail_counts: dict[str, int] = field(default_factory=dict)      # rsc id -> sum
    last_failures: dict[str, int] = field(default_factory=dict)    # rsc id -> latest epoch


@dataclass
class Cluster:
    options: dict[str, str]
    nodes: dict[str, Node]              # by uname
    primitives: dict[str, Primitive]
    orders: list[Order]
    fence_devices: int = 0

    def option(self, name: str, default: bool) -> bool:
        """A boolean cluster option, parsed as Pacemaker's crm_is_true does."""
        value = self.options.get(name)
        if value is None:
            return default
        return value.lower() in ("true", "yes", "y", "1", "on")

    @property
    def stonith_enabled(self) -> bool:
        return self.option("stonith-enabled", True)


def _nvpairs(parent: etree._Element | None, path: str) -> dict[str, str]:
    if parent is None:
        return {}
    return {nv.get("name"): nv.get("value", "") for nv in parent.iterfind(path)}


def read_cluster(cib: etree._Element) -> Cluster:
    """Read the configuration and status sections of a CIB."""
    config = cib.find("configuration")
    if config is None:
        raise ValueError("CIB has no configuration section")
    options = _nvpairs(config.find("crm_config"), "cluster_property_set/nvpair")
    nodes = {}
    by_uuid = {}
    for elem in config.iterfind("nodes/node"):
        node = Node(elem.get("id"), elem.get("uname") or elem.get("id"))
        nodes[node.uname] = node
        by_uuid[node.uuid] = node
    primitives = {}
    fence_devices = 0
    for elem in config.iterfind("resources/primitive"):
        if elem.get("class") == "stonith":
            fence_devices += 1
            continue
        meta = _nvpairs(elem, "meta_attributes/nvpair")
        monitors = {}
        for op in elem.iterfind("operations/op"):
            interval = parse_ms(op.get("interval"))
            if op.get("name") == "monitor" and interval > 0:
                monitors[interval] = parse_ms(op.get("timeout"), DEFAULT_OP_TIMEOUT_MS)
        threshold = parse_score(meta.get("migration-threshold", "INFINITY"))
        primitives[elem.get("id")] = Primitive(
            elem.get("id"), elem.get("class", ""), elem.get("provider"), elem.get("type", ""),
            _nvpairs(elem, "instance_attributes/nvpair"), monitors,
            threshold if threshold > 0 else INFINITY,
            parse_ms(meta.get("failure-timeout"), 0) // 1000,
            stopped=meta.get("target-role", "").lower() == "stopped")
    for loc in config.iterfind("constraints/rsc_location"):
        prim = primitives.get(loc.get("rsc"))
        if prim is not None and loc.get("node") and parse_score(loc.get("score")) > 0:
            prim.home = loc.get("node")
    orders = []
    for elem in config.iterfind("constraints/rsc_order"):
        kind = elem.get("kind")
        if kind is None:
            mandatory = elem.get("score") is None or parse_score(elem.get("score")) > 0
        else:
            mandatory = kind == "Mandatory"
        if elem.get("first") in primitives and elem.get("then") in primitives:
            orders.append(Order(elem.get("first"), elem.get("then"), mandatory))
    status = cib.find("status")
    if status is not None:
        for state in status.iterfind("node_state"):
            node = by_uuid.get(state.get("id"))
            if node is not None:
                _read_node_state(node, state)
    return Cluster(options, nodes, primitives, orders, fence_devices)


def _read_node_state(node: Node, state: etree._Element) -> None:
    node.has_state = True
    node.in_ccm, node.crmd = state.get("in_ccm"), state.get("crmd")
    node.join, node.expected = state.get("join"), state.get("expected")
    attrs = _nvpairs(state, "transient_attributes/instance_attributes/nvpair")
    for name, value in attrs.items():
        # Pacemaker sums every fail-count-<rsc>#<op> and takes the latest of every
        # last-failure-<rsc>#<op>, paired or not.
        if name.startswith("fail-count-"):
            rsc = name[len("fail-count-"):].partition("#")[0]
            total = node.fail_counts.get(rsc, 0) + parse_score(value)
            node.fail_counts[rsc] = max(-INFINITY, min(INFINITY, total))
        elif name.startswith("last-failure-"):
            rsc = name[len("last-failure-"):].partition("#")[0]
            node.last_failures[rsc] = max(node.last_failures.get(rsc, 0), _int(value) or 0)
    for elem in state.iterfind("lrm/lrm_resources/lrm_resource"):
        ops = [_hist_op(dict(op.attrib)) for op in elem.iterchildren("lrm_rsc_op")]
        ops.sort(key=lambda o: o.call_id)
        attrs = elem.attrib
        node.resources[attrs.get("id")] = LrmResource(
            attrs.get("id"), attrs.get("class", ""), attrs.get("provider"),
            attrs.get("type", ""), ops)


def _hist_op(a: dict[str, str]) -> HistOp:
    parts = a.get("transition-key", "").split(":")
    expected = _int(parts[2]) if len(parts) >= 4 else None
    return HistOp(a.get("operation", ""), _int(a.get("interval")) or 0,
                  _int(a.get("rc-code")) or 0, expected or 0, _int(a.get("op-status")) or 0,
                  _int(a.get("call-id")) or 0, a.get("op-digest"), _int(a.get("last-rc-change")),
                  a.get("id", "").endswith("_last_failure_0"))


def _int(text: str | None) -> int | None:
    if text is None:
        return None
    try:
        return int(text)
    except ValueError:
        return None
