"""The native transition computer: Pacemaker's decisions for pcloud's CIB subset, in-process.

It reads the same CIB as crm_simulate and produces a graph with the same actions and
orderings for pinned primitives (see tests/scenarios for the cases, each checked against
crm_simulate). Everything is computed in a few linear passes over resources and orders, so
it stays fast at thousands of resources.
"""

from __future__ import annotations

import logging
from collections import defaultdict, deque
from datetime import datetime

from lxml import etree

from dpe_agent.digest import op_digest
from dpe_agent.engines import EngineError, Unsupported
from dpe_agent.engines.native_graph import GraphBuilder
from dpe_agent.engines.native_history import (
    Instance,
    definition_changed,
    effective_failures,
    read_instance,
    restart_forced,
)
from dpe_agent.engines.native_model import Cluster, Node, Primitive, natural_key, read_cluster
from dpe_agent.graph import TransitionGraph

log = logging.getLogger(__name__)


class NativeEngine:
    name = "native"

    def __init__(self, fallback: bool = True) -> None:
        self.fallback = fallback    # False: raise Unsupported (the differential fuzzer)

    def compute(self, cib: etree._Element, now: datetime) -> TransitionGraph:
        try:
            return Scheduler(read_cluster(cib), int(now.timestamp())).run()
        except Unsupported as exc:
            if not self.fallback:
                raise
            log.warning("native engine: %s; using crm_simulate for this CIB", exc)
            from dpe_agent.engines.pacemaker import PacemakerEngine
            try:
                return PacemakerEngine().compute(cib, now)
            except EngineError as fallback_exc:
                raise EngineError(f"{exc}; fallback failed: {fallback_exc}") from fallback_exc


class Scheduler:
    """One scheduling run over a parsed cluster."""

    def __init__(self, cluster: Cluster, now: int) -> None:
        self.cluster = cluster
        self.now = now
        self.graph = GraphBuilder(cluster)
        self.instances: dict[str, list[Instance]] = defaultdict(list)
        self.recheck: int | None = None

    # -- phase 0: membership ------------------------------------------------------------
    def _membership(self) -> None:
        """Which nodes are online, which unclean (Pacemaker's determine_online_status)."""
        cluster = self.cluster
        fencing = cluster.stonith_enabled
        # Fencing enabled without a device: Pacemaker fences nothing and leaves every
        # resource unmanaged (probed and monitored where it is, never started or stopped).
        self.unmanaged = fencing and not cluster.fence_devices
        startup_fencing = cluster.option("startup-fencing", True)
        for node in cluster.nodes.values():
            if not node.has_state:
                node.unclean = startup_fencing          # never seen: unclean until seen
                continue
            in_ccm = _true(node.in_ccm)
            crmd = (node.crmd or "").lower() == "online"
            join = (node.join or "").lower()
            expected = (node.expected or "down").lower()
            member = crmd and join == "member"
            if in_ccm and crmd and join in ("pending", "down") or \
                    in_ccm and expected == "down" and (fencing or not member):
                raise Unsupported(f"node_state of {node.uname}: in the cluster but not a "
                                  f"member yet (join={node.join}, expected={node.expected})")
            if not fencing:
                node.online = in_ccm and member
                node.unclean = in_ccm and not crmd and expected != "down"
            elif node.in_ccm is None or join == "banned":
                node.unclean = True
            elif expected == "down":
                pass                                    # cleanly down
            elif not (in_ccm and crmd):
                node.unclean = True                     # lost, or its controller died
            elif join == "member":
                node.online = True
            else:
                node.unclean = True                     # unknown join state

    # -- phase 1: what is where ---------------------------------------------------------
    def _read_history(self) -> set[str]:
        """Read every lrm_resource; return the unames of nodes that must be fenced.

        Without fencing, Pacemaker never reads an offline node's history: what ran there
        is simply not running. With fencing, anything active on an offline node makes it
        unclean.
        """
        fencing = self.cluster.stonith_enabled
        prims = self.cluster.primitives
        for node in self.cluster.nodes.values():
            if not fencing and not node.online:
                continue
            for lrm in node.resources.values():
                prim = prims.get(lrm.id)
                if not fencing and any(op.operation == "stop" and op.failed for op in lrm.ops):
                    raise Unsupported(f"failed stop of {lrm.id} on {node.uname} without "
                                      "fencing (Pacemaker blocks the resource)")
                inst = read_instance(node, lrm, prim, self.now)
                self.instances[lrm.id].append(inst)
                if inst.fence and fencing or inst.active and not node.online:
                    node.unclean = True
                self._note_recheck(node, prim)
        if not fencing or self.unmanaged:
            return set()
        return {node.uname for node in self.cluster.nodes.values() if node.unclean}

    def _note_recheck(self, node: Node, prim: Primitive | None) -> None:
        if prim is None or prim.failure_timeout <= 0:
            return
        count, last = effective_failures(node, prim, self.now)
        if count > 0 and last > 0:
            when = last + prim.failure_timeout + 1
            if when > self.now and (self.recheck is None or when < self.recheck):
                self.recheck = when

    def _usable(self, node: Node | None) -> bool:
        return node is not None and node.online and not node.unclean

    # -- phase 2: what should run -----------------------------------------------------
    def _topological(self) -> list[str]:
        """Resources with every order's ``first`` before its ``then`` (cycles appended)."""
        prims = self.cluster.primitives
        indegree = dict.fromkeys(prims, 0)
        for order in self.cluster.orders:
            indegree[order.then] += 1
        queue = deque(r for r, d in indegree.items() if d == 0)
        result = []
        while queue:
            rid = queue.popleft()
            result.append(rid)
            for order in self.after[rid]:
                indegree[order.then] -= 1
                if indegree[order.then] == 0:
                    queue.append(order.then)
        seen = set(result)
        return result + [r for r in prims if r not in seen]

    def _plan(self) -> None:
        """Per resource, firsts before thens: may it run, must it (re)start, and does
        Pacemaker keep a start action for it (runnable or blocked; probes order on it)."""
        prims = self.cluster.primitives
        self.will_run: dict[str, bool] = {}
        self.needs_start: dict[str, bool] = {}
        self.has_start: dict[str, bool] = {}    # a start exists, runnable or blocked
        self.allowed: dict[str, bool] = {}      # may run on its node (maybe blocked)
        for rid in self._topological():
            prim = prims[rid]
            home = self.cluster.nodes.get(prim.home) if prim.home else None
            inst = self._home_instance(prim)
            placeable = self._usable(home) and not (inst is not None and inst.banned)
            if placeable and not (inst is not None and inst.clear_failcount):
                # A fail count about to be cleared does not count against the threshold.
                failures, _ = effective_failures(home, prim, self.now)
                placeable = failures < prim.migration_threshold
            allowed = placeable and not prim.stopped
            firsts = [o.first for o in self.before[rid] if o.mandatory]
            run = allowed and all(self.will_run.get(f, False) for f in firsts)
            self.will_run[rid] = run
            changed = inst is not None and inst.active and self._usable(inst.node) \
                and restart_forced(inst.lrm, prim)
            restart = inst is not None and inst.active and (
                inst.failed or changed
                or any(self.needs_start.get(f, False) for f in firsts))
            if self.unmanaged:
                run = allowed = inst is not None and inst.active and self._usable(home)
                restart = changed = False
                self.will_run[rid] = run
            self.allowed[rid] = allowed
            self.needs_start[rid] = run and (inst is None or not inst.active or restart)
            # A changed definition forces a restart even where the resource may not run.
            self.has_start[rid] = changed or allowed and (
                inst is None or not inst.active or restart or not run)

    def _home_instance(self, prim: Primitive) -> Instance | None:
        for inst in self.instances.get(prim.id, ()):
            if inst.node.uname == prim.home:
                return inst
        return None

    # -- phase 3: actions -------------------------------------------------------------
    def run(self) -> TransitionGraph:
        cluster = self.cluster
        self.after = defaultdict(list)
        self.before = defaultdict(list)
        for order in cluster.orders:
            self.after[order.first].append(order)
            self.before[order.then].append(order)
        self._membership()
        self.fence = self._read_history()
        self._plan()
        g = self.graph
        fenced_nodes = sorted(self.fence, key=natural_key)
        previous = None
        for uname in fenced_nodes:
            action = g.stonith(cluster.nodes[uname])
            if previous is not None:
                g.order(previous, action)
            previous = action
        for prim in cluster.primitives.values():
            self._resource_actions(prim)
        for rid, insts in self.instances.items():
            if rid not in cluster.primitives:
                self._orphan_actions(rid, insts)
        self._order_constraints()
        for start in g.starts.values():
            for uname in fenced_nodes:
                g.order(g.stoniths[uname], start)
        return g.build(recheck_by=self.recheck)

    def _stop(self, rid: str, inst: Instance):
        node = inst.node
        if node.uname in self.fence:
            action = self.graph.pseudo_stop(rid, node)
            self.graph.order(self.graph.stoniths[node.uname], action)
            return action
        if not node.online:
            return None
        return self.graph.rsc_op(rid, self.cluster.primitives.get(rid, inst.lrm), node, "stop")

    def _resource_actions(self, prim: Primitive) -> None:
        g, rid = self.graph, prim.id
        home = self.cluster.nodes.get(prim.home) if prim.home else None
        home_inst = None
        for inst in self.instances.get(rid, ()):
            if self._usable(inst.node) and not self.unmanaged and (inst.clear_failcount or (
                    inst.active and effective_failures(inst.node, prim, self.now)[0] > 0
                    and definition_changed(inst.lrm, prim))):
                g.clear_failcount(rid, inst.node)
            if inst.node is home:
                home_inst = inst
            if not inst.active or self.unmanaged:
                continue
            if inst.node is not home or not self.will_run[rid] or self.needs_start[rid]:
                stop = self._stop(rid, inst)
                if stop is not None:
                    g.stops.setdefault(rid, stop)
        probe = None
        if home is not None and self._usable(home) and (
                home_inst is None or not home_inst.known):
            probe = g.rsc_op(rid, prim, home, "monitor", probe=True)
            g.probes[rid] = probe
        if home_inst is not None and home_inst.active and self.allowed[rid]:
            for interval in sorted(home_inst.monitors):
                if interval not in prim.monitors:       # no longer configured: cancel
                    cancel = g.cancel(rid, prim, home, interval, home_inst.lrm)
                    if rid in g.stops:
                        g.order(g.stops[rid], cancel)
        if not self.will_run[rid]:
            return
        start = None
        if self.needs_start[rid]:
            start = g.rsc_op(rid, prim, home, "start")
            g.starts[rid] = start
            if probe is not None:
                g.order(probe, start)
            if rid in g.stops:
                g.order(g.stops[rid], start)
        active = {} if start is not None or home_inst is None else home_inst.monitors
        expired = set() if home_inst is None else home_inst.expired_monitors
        for interval, timeout in sorted(prim.monitors.items()):
            wanted = op_digest(prim.params, interval_ms=interval, timeout_ms=timeout)
            if interval in active and active[interval] == wanted and interval not in expired:
                continue
            monitor = g.rsc_op(rid, prim, home, "monitor", interval_ms=interval,
                               timeout_ms=timeout)
            if start is not None:
                g.order(start, monitor)

    def _orphan_actions(self, rid: str, insts: list[Instance]) -> None:
        for inst in insts:
            stop = self._stop(rid, inst) if inst.active and not self.unmanaged else None
            if not self._usable(inst.node):
                continue
            if inst.node.fail_counts.get(rid, 0) > 0 and not self.unmanaged:
                clear = self.graph.clear_failcount(rid, inst.node)
                if stop is not None:
                    self.graph.order(clear, stop)
            if self.unmanaged or any(other.failed for other in insts):
                continue                # Pacemaker cleans up no failed resource
            delete = self.graph.rsc_op(rid, inst.lrm, inst.node, "delete")
            if stop is not None:
                self.graph.order(stop, delete)

    def _order_constraints(self) -> None:
        g = self.graph
        for order in self.cluster.orders:
            first, then = order.first, order.then
            if first in g.starts and then in g.starts:
                g.order(g.starts[first], g.starts[then])
            if then in g.stops and first in g.stops:
                g.order(g.stops[then], g.stops[first])
            # The inverse order "stop then, stop first" waits for then's probe (any kind,
            # implied stops included).
            if then in g.probes and first in g.stops:
                g.order(g.probes[then], g.stops[first])
        self._probe_restart_orders()

    def _probe_restart_orders(self) -> None:
        """A probe comes before the real stops of what its start restarts.

        Pacemaker follows the start of a probed resource along Mandatory orders, through
        every start that exists when the order is applied, and orders the probe before
        those resources' stops (not before stops implied by fencing). Besides a resource's
        own (maybe blocked) start, applying an order creates the start of its ``first``
        when missing, so a start can also exist because of an earlier order.
        """
        g = self.graph
        real_stops = {rid for rid, stop in g.stops.items() if stop.kind == "rsc_op"}
        if not real_stops:
            return
        first_at: dict[str, int] = {}
        for index, order in enumerate(self.cluster.orders):
            first_at.setdefault(order.first, index)
        position = {id(order): index for index, order in enumerate(self.cluster.orders)}
        for rid, probe in g.probes.items():
            if not (self.has_start.get(rid) or rid in first_at):
                continue
            seen = {rid}
            todo = [rid]
            while todo:
                for order in self.after[todo.pop()]:
                    then = order.then
                    if not order.mandatory or then in seen:
                        continue
                    if not (self.has_start[then]
                            or first_at.get(then, len(position)) < position[id(order)]):
                        continue
                    seen.add(then)
                    todo.append(then)
                    if then in real_stops:
                        g.order(probe, g.stops[then])


def _true(text: str | None) -> bool:
    return (text or "").lower() in ("true", "yes", "y", "1", "on")
