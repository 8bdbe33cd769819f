"""Definitions of the differential scenarios: deployable + observed state -> cib.xml.

Each scenario is built through pcloud's own CIB builder, so the builder is exercised too;
``python -m tests.update_scenarios --cibs`` writes the resulting ``cib.xml`` files, which are
committed. Steady states are reached by running Pacemaker's graphs to completion.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from lxml import etree

from dpe_agent.cib import build_cib
from dpe_agent.engines import get_engine
from dpe_agent.observed import ObservedState

NOW = datetime(2026, 11, 21, 9, 0, 0, tzinfo=UTC)
EARLIER = NOW - timedelta(minutes=10)


@dataclass
class Svc:
    name: str
    cls: str = "ocf"
    provider: str | None = "heartbeat"
    type: str = "Dummy"
    monitor: float = 5
    params: dict[str, str] = field(default_factory=dict)
    failures: int | None = None
    period: int | None = None


def node_uuid(name: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_DNS, f"{name}.pcloud.test"))


def deployable(assemblies: dict[str, list[Svc]],
               deps: list[tuple[str, str] | tuple[str, str, str]] = ()) -> etree._Element:
    root = etree.Element("deployable", name="dep1", uuid=node_uuid("dep1"))
    asms = etree.SubElement(root, "assemblies")
    for name, services in assemblies.items():
        asm = etree.SubElement(asms, "assembly", name=name, uuid=node_uuid(name))
        svcs = etree.SubElement(asm, "services")
        for s in services:
            e = etree.SubElement(svcs, "service", name=s.name, monitor_interval=f"{s.monitor:g}")
            e.set("class", s.cls)
            if s.cls != "process":
                if s.provider and s.cls == "ocf":
                    e.set("provider", s.provider)
                e.set("type", s.type)
            if s.failures is not None:
                e.set("escalation_failures", str(s.failures))
            if s.period is not None:
                e.set("escalation_period", str(s.period))
            if s.params:
                ps = etree.SubElement(e, "parameters")
                for k, v in s.params.items():
                    etree.SubElement(ps, "parameter", name=k, value=v)
    cons = etree.SubElement(root, "constraints")
    for i, dep in enumerate(deps):
        d = etree.SubElement(cons, "service_dependency", id=f"dep{i}", first=dep[0], then=dep[1])
        if len(dep) > 2:
            d.set("kind", dep[2])
    return root


def settle(dep: etree._Element, observed: ObservedState, when: datetime = EARLIER) -> None:
    """Run Pacemaker's graphs to completion, every action succeeding."""
    engine = get_engine("pacemaker")
    for _ in range(6):
        graph = engine.compute(build_cib(dep, observed, now=when, escalation=True), when)
        if not len(graph):
            return
        done: set[int] = set()
        while len(done) < len(graph):
            for action in graph.ready(done):
                observed.record(action, action.target_rc, now=when)
                done.add(action.id)
    raise RuntimeError("deployable did not settle")


def online(*names: str) -> ObservedState:
    obs = ObservedState()
    for n in names:
        obs.set_online(n)
    return obs


def running(dep: etree._Element) -> ObservedState:
    obs = online(*dep.xpath("assemblies/assembly/@name"))
    settle(dep, obs)
    return obs


def fail_monitor(obs: ObservedState, asm: str, svc: str, times: int = 1,
                 when: datetime = NOW - timedelta(seconds=30), interval_ms: int = 5000) -> None:
    rid = f"{asm}.{svc}"
    for _ in range(times):
        obs.report_monitor(asm, rid, interval_ms, 7, now=when)


@dataclass
class Scenario:
    name: str
    description: str
    build: Callable[[], tuple[etree._Element, ObservedState]]
    now: datetime = NOW
    stop_all: bool = False      # the DPE's stop graph (every resource target-role=Stopped)


SCENARIOS: list[Scenario] = []


def scenario(name: str, description: str, now: datetime = NOW, stop_all: bool = False):
    def register(fn):
        SCENARIOS.append(Scenario(name, description, fn, now, stop_all))
        return fn
    return register


def cib_for(sc: Scenario) -> etree._Element:
    dep, obs = sc.build()
    return build_cib(dep, obs, now=sc.now, escalation=True, stop_all=sc.stop_all)
