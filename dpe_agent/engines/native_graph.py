"""Building a transition graph action by action, with Pacemaker's action vocabulary."""

from __future__ import annotations

from dpe_agent.cib import FEATURE_SET
from dpe_agent.digest import DEFAULT_OP_TIMEOUT_MS
from dpe_agent.engines.native_model import Cluster, LrmResource, Node, Primitive
from dpe_agent.graph import Action, Synapse, TransitionGraph


class GraphBuilder:
    """Creates numbered actions, remembers orderings, produces a TransitionGraph."""

    def __init__(self, cluster: Cluster) -> None:
        self.stonith_action = cluster.options.get("stonith-action", "reboot")
        self.actions: dict[tuple[str, str | None], Action] = {}
        self.edges: dict[int, set[int]] = {}
        self.starts: dict[str, Action] = {}
        self.stops: dict[str, Action] = {}
        self.probes: dict[str, Action] = {}
        self.stoniths: dict[str, Action] = {}

    def _add(self, key: str, node: str | None, make) -> Action:
        found = self.actions.get((key, node))
        if found is None:
            found = make(len(self.actions) + 1)
            self.actions[(key, node)] = found
        return found

    @staticmethod
    def _node_meta(node: Node) -> dict[str, str]:
        return {"CRM_meta_on_node": node.uname, "CRM_meta_on_node_uuid": node.uuid,
                "crm_feature_set": FEATURE_SET}

    def rsc_op(self, rid: str, source: Primitive | LrmResource, node: Node, operation: str, *,
               interval_ms: int = 0, timeout_ms: int = DEFAULT_OP_TIMEOUT_MS,
               probe: bool = False) -> Action:
        key = f"{rid}_{operation}_{interval_ms}"

        def make(aid: int) -> Action:
            attrs = dict(getattr(source, "params", {}))
            attrs.update(self._node_meta(node))
            attrs["CRM_meta_timeout"] = str(timeout_ms)
            if interval_ms:
                attrs["CRM_meta_interval"] = str(interval_ms)
                attrs["CRM_meta_name"] = operation
            if probe:
                attrs["CRM_meta_op_target_rc"] = "7"
            return Action(aid, "rsc_op", operation, key, rid, node.uname, node.uuid,
                          source.rsc_class, source.provider, source.rsc_type, attrs)
        return self._add(key, node.uname, make)

    def cancel(self, rid: str, source: Primitive, node: Node, interval_ms: int,
               lrm: LrmResource) -> Action:
        key = f"{rid}_monitor_{interval_ms}"
        call_id = max((op.call_id for op in lrm.ops
                       if op.operation == "monitor" and op.interval_ms == interval_ms), default=0)

        def make(aid: int) -> Action:
            attrs = self._node_meta(node)
            attrs.update({"CRM_meta_call_id": str(call_id), "CRM_meta_interval": str(interval_ms),
                          "CRM_meta_operation": "monitor",
                          "CRM_meta_timeout": str(DEFAULT_OP_TIMEOUT_MS)})
            return Action(aid, "rsc_op", "cancel", key, rid, node.uname, node.uuid,
                          source.rsc_class, source.provider, source.rsc_type, attrs)
        return self._add("cancel " + key, node.uname, make)

    def pseudo_stop(self, rid: str, node: Node) -> Action:
        key = f"{rid}_stop_0"

        def make(aid: int) -> Action:
            attrs = {"CRM_meta_timeout": str(DEFAULT_OP_TIMEOUT_MS),
                     "crm_feature_set": FEATURE_SET}
            return Action(aid, "pseudo_event", "stop", key, rid, attributes=attrs)
        return self._add(key, None, make)

    def stonith(self, node: Node) -> Action:
        key = f"stonith-{node.uname}-{self.stonith_action}"

        def make(aid: int) -> Action:
            attrs = self._node_meta(node)
            attrs["CRM_meta_stonith_action"] = self.stonith_action
            return Action(aid, "crm_event", "stonith", key, None, node.uname, node.uuid,
                          attributes=attrs, downed=[node.uuid])
        action = self._add(key, node.uname, make)
        self.stoniths[node.uname] = action
        return action

    def clear_failcount(self, rid: str, node: Node) -> Action:
        key = f"{rid}_clear_failcount_0"

        def make(aid: int) -> Action:
            attrs = self._node_meta(node)
            attrs.update({"CRM_meta_op_no_wait": "true",
                          "CRM_meta_timeout": str(DEFAULT_OP_TIMEOUT_MS)})
            return Action(aid, "crm_event", "clear_failcount", key, rid, node.uname, node.uuid,
                          attributes=attrs)
        return self._add(key, node.uname, make)

    def order(self, before: Action, after: Action) -> None:
        """``after`` waits for ``before``."""
        if before.id != after.id:
            self.edges.setdefault(after.id, set()).add(before.id)

    def build(self, recheck_by: int | None = None) -> TransitionGraph:
        synapses = [Synapse(index, action, sorted(self.edges.get(action.id, ())))
                    for index, action in enumerate(self.actions.values())]
        return TransitionGraph(synapses, recheck_by=recheck_by)
