"""The deployable model (DESIGN §3): assemblies, their services and dependencies.

``Deployable.from_xml`` is the one way in: it validates against schemas/deployable.rng, then
checks what a grammar cannot (:mod:`pcloud.deployable_checks`: unique names, existing
dependency endpoints, no cycles, what each service class needs) and assigns missing uuids, so
the stored document keeps them.
"""

from __future__ import annotations

import uuid as uuidlib
from collections.abc import Iterator
from dataclasses import dataclass, field, fields, replace

from lxml import etree

from pcloud import schemas, xmlsafe
from pcloud.deployable_checks import DeployableError, check, service_problem, source_lines

INFRASTRUCTURES = ("process", "qemu", "libvirt", "openstack")
SERVICE_CLASSES = ("ocf", "lsb", "systemd", "process")
DEFAULT_HEARTBEAT_INTERVAL = 1.0
DEFAULT_HEARTBEAT_MISSES = 3
DEFAULT_MONITOR_INTERVAL = 10.0


def _new_uuid() -> str:
    return str(uuidlib.uuid4())


# Written where a uuid goes but meaning "assign one" (DESIGN's examples use ``uuid="…"``).
UUID_PLACEHOLDERS = frozenset({"", "…", "..."})


def _is_placeholder(value: str | None) -> bool:
    """True for a uuid attribute that counts as missing: empty, blank or ``…``/``...``."""
    return value is not None and value.strip() in UUID_PLACEHOLDERS


def _seconds(text: str | None) -> float | None:
    return None if text is None else float(text)


def _int(text: str | None) -> int | None:
    return None if text is None else int(text)


def _fmt(value: float | int) -> str:
    """Numbers as written by people: 5 not 5.0, 0.25 stays 0.25."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return repr(value) if isinstance(value, float) else str(value)


def _set(element: etree._Element, name: str, value: object) -> None:
    if value is None:
        return
    element.set(name, _fmt(value) if isinstance(value, int | float) else str(value))


@dataclass(frozen=True)
class Probe:
    """A liveness probe the guest agent runs beside the resource's monitor."""

    kind: str
    url: str | None = None
    expect_status: int | None = None
    host: str | None = None
    port: int | None = None
    command: str | None = None
    interval: float | None = None
    timeout: float | None = None
    failures: int | None = None

    @classmethod
    def from_element(cls, element: etree._Element) -> Probe:
        a = element.attrib
        return cls(kind=a["kind"], url=a.get("url"), expect_status=_int(a.get("expect_status")),
                   host=a.get("host"), port=_int(a.get("port")), command=a.get("command"),
                   interval=_seconds(a.get("interval")), timeout=_seconds(a.get("timeout")),
                   failures=_int(a.get("failures")))

    def to_element(self) -> etree._Element:
        element = etree.Element("probe")
        for f in fields(self):
            _set(element, f.name, getattr(self, f.name))
        return element


@dataclass(frozen=True)
class Service:
    """One resource of an assembly. ``klass`` is the XML ``class`` attribute."""

    name: str
    klass: str
    provider: str | None = None
    type: str | None = None
    uuid: str | None = None
    monitor_interval: float | None = None
    start_timeout: float | None = None
    stop_timeout: float | None = None
    escalation_failures: int | None = None
    escalation_period: float | None = None
    parameters: tuple[tuple[str, str], ...] = ()
    probe: Probe | None = None

    @property
    def params(self) -> dict[str, str]:
        return dict(self.parameters)

    @property
    def agent(self) -> str:
        """The resource agent as Pacemaker writes it: ``ocf:heartbeat:mysql``,
        ``systemd:nginx``, ``process``."""
        return ":".join(p for p in (self.klass, self.provider, self.type) if p)

    def monitor_every(self) -> float:
        """The monitor interval in seconds, with pcloud's default."""
        return self.monitor_interval or DEFAULT_MONITOR_INTERVAL

    def without_uuid(self) -> Service:
        return replace(self, uuid=None)

    @classmethod
    def from_element(cls, element: etree._Element) -> Service:
        a = element.attrib
        params = element.find("parameters")
        probe = element.find("probe")
        return cls(
            name=a["name"], klass=a["class"], provider=a.get("provider"), type=a.get("type"),
            uuid=a.get("uuid"), monitor_interval=_seconds(a.get("monitor_interval")),
            start_timeout=_seconds(a.get("start_timeout")),
            stop_timeout=_seconds(a.get("stop_timeout")),
            escalation_failures=_int(a.get("escalation_failures")),
            escalation_period=_seconds(a.get("escalation_period")),
            parameters=tuple((p.get("name"), p.get("value"))
                             for p in (params if params is not None else ())
                             if isinstance(p.tag, str)),
            probe=Probe.from_element(probe) if probe is not None else None)

    @classmethod
    def from_xml(cls, root_or_text: etree._Element | str | bytes,
                 source: str | None = None) -> Service:
        """Read a lone ``<service>`` (a template): schema and class rules checked."""
        root = _root(root_or_text, source)
        schemas.validate(root, "service", source)
        service = cls.from_element(root)
        problem = service_problem(service)
        if problem:
            raise DeployableError(f'service "{service.name}": {problem}', root.sourceline, source)
        return service

    def to_element(self) -> etree._Element:
        element = etree.Element("service")
        element.set("name", self.name)
        _set(element, "uuid", self.uuid)
        element.set("class", self.klass)
        for name in ("provider", "type", "monitor_interval", "start_timeout", "stop_timeout",
                     "escalation_failures", "escalation_period"):
            _set(element, name, getattr(self, name))
        if self.parameters:
            params = etree.SubElement(element, "parameters")
            for name, value in self.parameters:
                etree.SubElement(params, "parameter", name=name, value=value)
        if self.probe is not None:
            element.append(self.probe.to_element())
        return element


@dataclass(frozen=True)
class Assembly:
    """One VM (or process sandbox) and the services that must run in it."""

    name: str
    uuid: str | None = None
    image: str | None = None
    heartbeat_interval: float | None = None
    heartbeat_misses: int | None = None
    escalation_failures: int | None = None
    escalation_period: float | None = None
    services: tuple[Service, ...] = ()

    def service(self, name: str) -> Service:
        for service in self.services:
            if service.name == name:
                return service
        raise KeyError(f'assembly "{self.name}" has no service "{name}"')

    def heartbeat(self) -> tuple[float, int]:
        """(interval seconds, misses tolerated), with pcloud's defaults."""
        return (self.heartbeat_interval or DEFAULT_HEARTBEAT_INTERVAL,
                self.heartbeat_misses or DEFAULT_HEARTBEAT_MISSES)

    @classmethod
    def from_element(cls, element: etree._Element) -> Assembly:
        a = element.attrib
        services = element.find("services")
        return cls(
            name=a["name"], uuid=a.get("uuid"), image=a.get("image"),
            heartbeat_interval=_seconds(a.get("heartbeat_interval")),
            heartbeat_misses=_int(a.get("heartbeat_misses")),
            escalation_failures=_int(a.get("escalation_failures")),
            escalation_period=_seconds(a.get("escalation_period")),
            services=tuple(Service.from_element(s)
                           for s in (services if services is not None else ())
                           if s.tag == "service"))

    def to_element(self) -> etree._Element:
        element = etree.Element("assembly")
        for name in ("name", "uuid", "image", "heartbeat_interval", "heartbeat_misses",
                     "escalation_failures", "escalation_period"):
            _set(element, name, getattr(self, name))
        services = etree.SubElement(element, "services")
        for service in self.services:
            services.append(service.to_element())
        return element


@dataclass(frozen=True)
class Dependency:
    """``first`` must run before ``then`` starts (and ``then`` stops before ``first``)."""

    id: str
    first_assembly: str
    first_service: str
    then_assembly: str
    then_service: str

    @property
    def first(self) -> str:
        return f"{self.first_assembly}:{self.first_service}"

    @property
    def then(self) -> str:
        return f"{self.then_assembly}:{self.then_service}"

    @classmethod
    def from_element(cls, element: etree._Element) -> Dependency:
        first_a, _, first_s = element.get("first").partition(":")
        then_a, _, then_s = element.get("then").partition(":")
        return cls(element.get("id"), first_a, first_s, then_a, then_s)

    def to_element(self) -> etree._Element:
        return etree.Element("service_dependency", id=self.id, first=self.first, then=self.then)


@dataclass(frozen=True)
class Deployable:
    """A deployable: what the CPE stores and one DPE manages."""

    name: str
    uuid: str | None = None
    infrastructure: str = "process"
    escalation_failures: int | None = None
    escalation_period: float | None = None
    assemblies: tuple[Assembly, ...] = ()
    dependencies: tuple[Dependency, ...] = field(default=())

    @property
    def constraints(self) -> tuple[Dependency, ...]:
        return self.dependencies

    def assembly(self, name: str) -> Assembly:
        for assembly in self.assemblies:
            if assembly.name == name:
                return assembly
        raise KeyError(f'deployable "{self.name}" has no assembly "{name}"')

    def services(self) -> Iterator[tuple[Assembly, Service]]:
        """Every (assembly, service) pair, in document order."""
        for assembly in self.assemblies:
            for service in assembly.services:
                yield assembly, service

    @classmethod
    def from_xml(cls, root_or_text: etree._Element | str | bytes,
                 source: str | None = None, assign_uuids: bool = True) -> Deployable:
        """Read, validate (schema and semantics) and complete a deployable document.

        Every uuid is kept verbatim (any identifier without blanks, as schemas/common.rng
        says), except the placeholders ``…``, ``...`` and an empty value, which count as
        missing. ``root_or_text`` given as an element may be modified that way.

        Raises XMLError for malformed or schema-invalid input and DeployableError (a subclass)
        for semantic errors; both carry a line number.
        """
        root = _root(root_or_text, source)
        for element in root.iter("deployable", "assembly", "service"):
            if _is_placeholder(element.get("uuid")):
                del element.attrib["uuid"]
        schemas.validate(root, "deployable", source)
        a = root.attrib
        constraints = root.find("constraints")
        deployable = cls(
            name=a["name"], uuid=a.get("uuid"), infrastructure=a.get("infrastructure", "process"),
            escalation_failures=_int(a.get("escalation_failures")),
            escalation_period=_seconds(a.get("escalation_period")),
            assemblies=tuple(Assembly.from_element(e) for e in root.find("assemblies")
                             if e.tag == "assembly"),
            dependencies=tuple(Dependency.from_element(e)
                               for e in (constraints if constraints is not None else ())
                               if e.tag == "service_dependency"))
        check(deployable, source_lines(root), source)
        return deployable.with_uuids() if assign_uuids else deployable

    def with_uuids(self) -> Deployable:
        """A copy where every deployable, assembly and service has a uuid (uuid4 if missing)."""
        return replace(
            self, uuid=self.uuid or _new_uuid(),
            assemblies=tuple(replace(
                asm, uuid=asm.uuid or _new_uuid(),
                services=tuple(replace(svc, uuid=svc.uuid or _new_uuid())
                               for svc in asm.services))
                for asm in self.assemblies))

    def adopt_uuids(self, old: Deployable) -> Deployable:
        """A copy keeping ``old``'s uuids for components of the same name (reload)."""
        old_asms = {a.name: a for a in old.assemblies}

        def service_uuid(asm: str, svc: Service) -> str | None:
            if asm in old_asms:
                for previous in old_asms[asm].services:
                    if previous.name == svc.name:
                        return previous.uuid or svc.uuid
            return svc.uuid

        return replace(
            self, uuid=old.uuid or self.uuid,
            assemblies=tuple(replace(
                asm, uuid=(old_asms[asm.name].uuid if asm.name in old_asms else None) or asm.uuid,
                services=tuple(replace(svc, uuid=service_uuid(asm.name, svc))
                               for svc in asm.services))
                for asm in self.assemblies))

    def to_element(self) -> etree._Element:
        root = etree.Element("deployable")
        for name in ("name", "uuid", "infrastructure", "escalation_failures",
                     "escalation_period"):
            _set(root, name, getattr(self, name))
        assemblies = etree.SubElement(root, "assemblies")
        for assembly in self.assemblies:
            assemblies.append(assembly.to_element())
        if self.dependencies:
            constraints = etree.SubElement(root, "constraints")
            for dependency in self.dependencies:
                constraints.append(dependency.to_element())
        return root

    def to_xml(self) -> str:
        element = self.to_element()
        etree.indent(element, space="  ")
        return etree.tostring(element, encoding="unicode") + "\n"


@dataclass(frozen=True)
class DeployableDiff:
    """What a reload changes. Names are assembly names or ``(assembly, service)`` pairs;
    a changed service differs in anything but its uuid (class, parameters, intervals, ...)."""

    deployable_changed: bool = False
    assemblies_added: tuple[str, ...] = ()
    assemblies_removed: tuple[str, ...] = ()
    assemblies_changed: tuple[str, ...] = ()
    services_added: tuple[tuple[str, str], ...] = ()
    services_removed: tuple[tuple[str, str], ...] = ()
    services_changed: tuple[tuple[str, str], ...] = ()
    dependencies_added: tuple[Dependency, ...] = ()
    dependencies_removed: tuple[Dependency, ...] = ()

    def __bool__(self) -> bool:
        return any(getattr(self, f.name) for f in fields(self))


def diff(old: Deployable, new: Deployable) -> DeployableDiff:
    """Compare two versions of a deployable, ignoring uuids."""
    old_asms = {a.name: a for a in old.assemblies}
    new_asms = {a.name: a for a in new.assemblies}
    old_svcs = {(a.name, s.name): s.without_uuid() for a, s in old.services()}
    new_svcs = {(a.name, s.name): s.without_uuid() for a, s in new.services()}

    def bare(asm: Assembly) -> Assembly:
        return replace(asm, uuid=None, services=())

    old_deps, new_deps = set(old.dependencies), set(new.dependencies)
    return DeployableDiff(
        deployable_changed=(
            (old.infrastructure, old.escalation_failures, old.escalation_period)
            != (new.infrastructure, new.escalation_failures, new.escalation_period)),
        assemblies_added=tuple(n for n in new_asms if n not in old_asms),
        assemblies_removed=tuple(n for n in old_asms if n not in new_asms),
        assemblies_changed=tuple(n for n in new_asms if n in old_asms
                                 and bare(old_asms[n]) != bare(new_asms[n])),
        services_added=tuple(k for k in new_svcs if k not in old_svcs),
        services_removed=tuple(k for k in old_svcs if k not in new_svcs),
        services_changed=tuple(k for k in new_svcs if k in old_svcs
                               and old_svcs[k] != new_svcs[k]),
        dependencies_added=tuple(d for d in new.dependencies if d not in old_deps),
        dependencies_removed=tuple(d for d in old.dependencies if d not in new_deps))


def _root(root_or_text: etree._Element | str | bytes, source: str | None) -> etree._Element:
    """The document's root element, parsing text safely (no entities, no network)."""
    if isinstance(root_or_text, str | bytes):
        return xmlsafe.parse(root_or_text, source=source)
    return root_or_text


__all__ = [
    "INFRASTRUCTURES", "SERVICE_CLASSES", "Assembly", "Dependency", "Deployable",
    "DeployableDiff", "DeployableError", "Probe", "Service", "diff",
]
