"""Transition computers: CIB in, transition graph out.

API (pure policy; the DPE runtime codes against this)::

    from dpe_agent.cib import build_cib, rsc_id, split_rsc_id
    from dpe_agent.observed import ObservedState, AssemblyStatus
    from dpe_agent.graph import TransitionGraph, Action
    from dpe_agent.engines import get_engine, EngineError

    observed = ObservedState()
    observed.set_online("db")                        # heartbeating assembly
    observed.set_lost("web")                         # missed heartbeats -> will be fenced
    cib = build_cib(deployable_root, observed, now=now)   # lxml <cib> element
    graph = get_engine("native").compute(cib, now)        # or "pacemaker" (crm_simulate)
    for action in graph.ready(done_ids):             # Action: id, kind, operation, resource,
        ...                                          #   node, interval_ms, timeout_ms,
    observed.record(action, rc, now=now)             #   parameters, target_rc, downed
    observed.report_monitor("db", "db.mysqld", 5000, 7, now=now)   # agent: not running
    observed.set_fenced("web")                       # after the driver powered it off
    observed.rejoined("web")                         # back with an empty history

Both engines give the same actions and orderings on the CIB subset pcloud generates
(tests/scenarios). ``native`` is the in-process default; ``pacemaker`` runs crm_simulate.
"""

from __future__ import annotations

from datetime import datetime
from typing import Protocol

from lxml import etree

from dpe_agent.graph import TransitionGraph


class EngineError(Exception):
    """A transition computer could not produce a graph (the message says why)."""


class Unsupported(EngineError):
    """The CIB uses a construct the native engine does not implement (the message names it).

    Guessing would risk a wrong graph, so the native engine hands such a CIB to Pacemaker's
    own scheduler instead (``NativeEngine(fallback=True)``, the default).
    """


class TransitionComputer(Protocol):
    name: str

    def compute(self, cib: etree._Element, now: datetime) -> TransitionGraph:
        """The transition graph that brings the CIB's status to its configuration."""


ENGINES = ("native", "pacemaker")


def get_engine(name: str = "native") -> TransitionComputer:
    """A transition computer by name: ``native`` (default) or ``pacemaker``."""
    if name == "native":
        from dpe_agent.engines.native import NativeEngine
        return NativeEngine()
    if name == "pacemaker":
        from dpe_agent.engines.pacemaker import PacemakerEngine
        return PacemakerEngine()
    raise EngineError(f"unknown transition engine {name!r} (choose from {', '.join(ENGINES)})")
