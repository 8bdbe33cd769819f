"""Semantic checks of a deployable: what a RelaxNG grammar cannot say.

Unique names and uuids, existing dependency endpoints, no dependency cycles, what each service
class and probe kind needs, escalation settings given in pairs. Each problem is reported with
the source line of the component it is about, so an operator can fix the document.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from lxml import etree

from pcloud.xmlsafe import XMLError

if TYPE_CHECKING:
    from pcloud.deployable import Deployable, Probe, Service


class DeployableError(XMLError):
    """A deployable that is well-formed and schema-valid but makes no sense."""


def source_lines(root: etree._Element) -> dict[tuple[str, ...], list[int]]:
    """Source lines of components (every occurrence of a name), so a semantic error points
    at the right line."""
    lines: dict[tuple[str, ...], list[int]] = {("deployable",): [root.sourceline or 1]}
    for asm in root.iterfind("assemblies/assembly"):
        lines.setdefault(("assembly", asm.get("name")), []).append(asm.sourceline)
        for svc in asm.iterfind("services/service"):
            key = ("service", asm.get("name"), svc.get("name"))
            lines.setdefault(key, []).append(svc.sourceline)
    for dep in root.iterfind("constraints/service_dependency"):
        lines.setdefault(("dependency", dep.get("id")), []).append(dep.sourceline)
    return lines


def _escalation_problem(failures: int | None, period: float | None) -> str | None:
    if failures is not None and period is None:
        return "escalation_failures needs escalation_period (the window they are counted in)"
    if period is not None and failures is None:
        return "escalation_period needs escalation_failures (how many failures escalate)"
    return None


def _probe_problem(probe: Probe) -> str | None:
    needs = {"http": "url", "tcp": "port", "exec": "command"}[probe.kind]
    kind = f"an {probe.kind}" if probe.kind == "exec" else f"a {probe.kind}"
    if getattr(probe, needs) is None:
        return f'{kind} probe needs the attribute "{needs}"'
    extra = [n for n in ("url", "port", "host", "command", "expect_status")
             if getattr(probe, n) is not None and n not in {
                 "http": ("url", "expect_status"), "tcp": ("port", "host"),
                 "exec": ("command",)}[probe.kind]]
    if extra:
        return f'{kind} probe does not take the attribute "{extra[0]}"'
    if probe.timeout and probe.interval and probe.timeout > probe.interval:
        return "the probe timeout is longer than its interval"
    return None


def service_problem(service: Service) -> str | None:
    """What is wrong with one service on its own, or None."""
    if service.klass == "ocf" and not (service.provider and service.type):
        return 'class "ocf" needs both "provider" and "type" (e.g. provider="heartbeat" ' \
               'type="apache")'
    if service.klass in ("lsb", "systemd") and not service.type:
        what = "init script" if service.klass == "lsb" else "unit"
        return f'class "{service.klass}" needs "type" (the {what})'
    if service.klass != "ocf" and service.provider:
        return f'class "{service.klass}" takes no "provider"'
    names = [name for name, _ in service.parameters]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        return f'parameter "{duplicates[0]}" is given twice'
    if service.klass == "process" and not service.params.get("command", "").strip():
        return 'class "process" needs a non-empty "command" parameter'
    if service.probe is not None:
        problem = _probe_problem(service.probe)
        if problem:
            return problem
    return _escalation_problem(service.escalation_failures, service.escalation_period)


def check(dep: Deployable, lines: dict[tuple[str, ...], list[int]],
           source: str | None) -> None:
    """Raise DeployableError for the first semantic problem of a deployable."""

    def fail(message: str, key: tuple[str, ...] = ("deployable",), occurrence: int = 0
             ) -> None:
        found = lines.get(key) or lines[("deployable",)]
        raise DeployableError(message, found[min(occurrence, len(found) - 1)], source)

    problem = _escalation_problem(dep.escalation_failures, dep.escalation_period)
    if problem:
        fail(f'deployable "{dep.name}": {problem}')
    seen_asms: set[str] = set()
    seen_uuids: set[str] = set()
    for asm in dep.assemblies:
        key = ("assembly", asm.name)
        if asm.name in seen_asms:
            fail(f'assembly name "{asm.name}" is used twice', key, 1)
        seen_asms.add(asm.name)
        if asm.uuid and asm.uuid in seen_uuids:
            fail(f'assembly "{asm.name}" has the uuid of another component', key)
        if asm.uuid:
            seen_uuids.add(asm.uuid)
        problem = _escalation_problem(asm.escalation_failures, asm.escalation_period)
        if problem:
            fail(f'assembly "{asm.name}": {problem}', key)
        seen_svcs: set[str] = set()
        for svc in asm.services:
            key = ("service", asm.name, svc.name)
            if svc.name in seen_svcs:
                fail(f'service name "{svc.name}" is used twice in assembly "{asm.name}"',
                     key, 1)
            seen_svcs.add(svc.name)
            problem = service_problem(svc)
            if problem:
                fail(f'service "{asm.name}:{svc.name}": {problem}', key)
    _check_dependencies(dep, fail)


def _check_dependencies(dep: Deployable, fail: Callable[..., None]) -> None:
    services = {f"{a.name}:{s.name}" for a, s in dep.services()}
    ids: set[str] = set()
    edges: dict[str, list[str]] = {}
    for d in dep.dependencies:
        key = ("dependency", d.id)
        if d.id in ids:
            fail(f'dependency id "{d.id}" is used twice', key, 1)
        ids.add(d.id)
        for end, ref in (("first", d.first), ("then", d.then)):
            if ref not in services:
                asm = ref.partition(":")[0]
                why = (f'no service "{ref.partition(":")[2]}" in assembly "{asm}"'
                       if asm in {a.name for a in dep.assemblies} else f'no assembly "{asm}"')
                fail(f'dependency "{d.id}": {end} "{ref}" names no service ({why})', key)
        if d.first == d.then:
            fail(f'dependency "{d.id}": a service cannot depend on itself', key)
        edges.setdefault(d.first, []).append(d.then)
    cycle = _find_cycle(edges)
    if cycle:
        culprit = next(d for d in dep.dependencies if d.first == cycle[-2] and d.then == cycle[-1])
        fail("dependencies form a cycle: " + " -> ".join(cycle), ("dependency", culprit.id))


def _find_cycle(edges: dict[str, list[str]]) -> list[str] | None:
    """A cycle in the dependency graph as a path that ends where it starts, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in edges.get(node, ()):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for start in sorted(edges):
        if start not in state:
            found = visit(start)
            if found:
                return found
    return None
