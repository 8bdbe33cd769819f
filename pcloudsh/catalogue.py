"""The operator's catalogue: assemblies, their resources, deployables, under ``<state>/pcloudsh``.

One JSON file, rewritten atomically under an exclusive lock, so two shells never lose each
other's changes and a crash never leaves half a catalogue. Resources are copies of the resource
templates taken when they were added, so editing a template later does not change a deployable
silently. Templates come from the user's folder (``$XDG_CONFIG_HOME/pcloud/templates``, by
default ``~/.config/pcloud/templates``) and from the installed ``xml/templates``; a user
template of the same name wins. ``document()`` turns a catalogue deployable into the
``<deployable>`` document the CPE takes. Deployables started from a file are remembered too
(name, file, infrastructure, assemblies), so a listing without the CPE still shows them.
"""

from __future__ import annotations

import fcntl
import json
import os
import uuid as uuidlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from lxml import etree

from pcloud import paths, schemas, xmlsafe
from pcloud.deployable import INFRASTRUCTURES, Deployable
from pcloud.fsutil import write_json_atomic
from pcloud.wire import NAME

NAME_RE = NAME
FORMAT_VERSION = 1


class CatalogueError(Exception):
    """A catalogue command cannot be done; the message says why, in one line."""


def check_name(name: str, what: str) -> str:
    if not NAME_RE.match(name):
        raise CatalogueError(f"{what} name {name!r} is not valid: use 1 to 64 letters, digits, "
                             "'_' or '-'")
    return name


def templates_dir() -> Path:
    """The templates installed with pcloud."""
    return paths.data_dir("xml") / "templates"


def user_templates_dir() -> Path:
    """The operator's own templates: ``$XDG_CONFIG_HOME/pcloud/templates``."""
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(Path.home(), ".config")
    return Path(base) / "pcloud" / "templates"


def template_dirs() -> list[Path]:
    """Where templates are looked for, first match wins."""
    dirs = [user_templates_dir()]
    try:
        dirs.append(templates_dir())
    except FileNotFoundError:
        pass
    return dirs


def template_path(name: str) -> Path | None:
    """The file of template ``name``, or None."""
    return next((d / f"{name}.xml" for d in template_dirs() if (d / f"{name}.xml").is_file()),
                None)


def template_names() -> list[str]:
    return sorted({p.stem for d in template_dirs() if d.is_dir() for p in d.glob("*.xml")
                   if NAME_RE.match(p.stem)})


#: What each template's service needs besides resource-agents (which pcloud installs): the
#: Debian packages (the program's, then what its OCF agent calls: apache's fetches its status
#: page with curl or wget) and the program the OCF agent runs. ``dummy`` and ``process`` need
#: nothing more, nor do user templates.
TEMPLATE_NEEDS: dict[str, tuple[tuple[str, ...], str]] = {
    "httpd": (("apache2", "curl"), "/usr/sbin/apache2"),
    "mysqld": (("mariadb-server",), "/usr/sbin/mysqld"),
    "nginx": (("nginx",), "/usr/sbin/nginx"),
    "postgresql": (("postgresql-15",), "/usr/lib/postgresql/15/bin/pg_ctl"),
}


def template_needs(name: str) -> tuple[tuple[str, ...], bool]:
    """The packages a template needs (none: nothing) and whether its program is on this
    host."""
    packages, program = TEMPLATE_NEEDS.get(name, ((), ""))
    return packages, not packages or os.access(program, os.X_OK)


def missing_program_warning(template: str, where: str) -> str | None:
    """A one-line warning when ``template``'s program is not on this host, else None."""
    packages, here = template_needs(template)
    if here:
        return None
    _, program = TEMPLATE_NEEDS[template]
    return (f"warning: {where} uses template {template!r}, whose program {program} is not "
            f"installed on this host (Debian package {packages[0]}): on the process "
            "infrastructure it will be blocked until you install it; qemu and libvirt "
            "assemblies need it in their image")


def load_template(name: str) -> etree._Element:
    """A resource template: one validated ``<service>`` element."""
    check_name(name, "template")
    path = template_path(name)
    if path is None:
        known = ", ".join(template_names()) or "none"
        raise CatalogueError(f"no resource template {name!r} (known: {known}; your own go "
                             f"in {user_templates_dir()})")
    try:
        root = xmlsafe.parse(path.read_bytes(), source=str(path))
        schemas.validate(root, "service", str(path))
    except xmlsafe.XMLError as exc:
        raise CatalogueError(f"resource template {name!r} is invalid: {exc}") from None
    return root


def _positive(value: str, what: str, integer: bool = False) -> float | int:
    try:
        number = int(value) if integer else float(value)
    except ValueError:
        raise CatalogueError(f"{what} must be a positive {'integer' if integer else 'number'}, "
                             f"not {value!r}") from None
    if number <= 0:
        raise CatalogueError(f"{what} must be positive, not {value!r}")
    return number


def escalation(failures: str, period: str) -> dict[str, Any]:
    """Parse an escalation setting: FAILURES failures within PERIOD seconds."""
    return {"failures": _positive(failures, "failures", integer=True),
            "period": _positive(period, "period (seconds)")}


def _number_text(value: float | int) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


class Catalogue:
    """Access to ``catalogue.json``; every mutating method is one locked read-modify-write."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.path = root / "catalogue.json"
        self.images_dir = root / "images"

    @staticmethod
    def _empty() -> dict[str, Any]:
        return {"version": FORMAT_VERSION, "assemblies": {}, "deployables": {}, "files": {}}

    def load(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return self._empty()
        except (OSError, ValueError) as exc:
            raise CatalogueError(f"catalogue {self.path} is unreadable: {exc}") from None
        if data.get("version") != FORMAT_VERSION:
            raise CatalogueError(f"catalogue {self.path} has format {data.get('version')!r}, "
                                 f"this pcloudsh reads {FORMAT_VERSION}")
        data.setdefault("files", {})
        return data

    @contextmanager
    def edit(self) -> Iterator[dict[str, Any]]:
        """Yield the catalogue for changes; written back atomically when the block succeeds."""
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".lock", "a", encoding="utf-8") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            data = self.load()
            yield data
            write_json_atomic(self.path, data)

    # --- assemblies --------------------------------------------------------------------

    def assembly_create(self, name: str, jeos: str, image: str | None = None) -> dict[str, Any]:
        check_name(name, "assembly")
        with self.edit() as data:
            if name in data["assemblies"]:
                raise CatalogueError(f"assembly {name!r} already exists")
            entry = {"uuid": str(uuidlib.uuid4()), "jeos": jeos, "image": image,
                     "resources": {}, "escalation": None}
            data["assemblies"][name] = entry
            return entry

    def assembly_clone(self, source: str, name: str, image: str | None = None
                       ) -> dict[str, Any]:
        check_name(name, "assembly")
        with self.edit() as data:
            original = self._assembly(data, source)
            if name in data["assemblies"]:
                raise CatalogueError(f"assembly {name!r} already exists")
            entry = json.loads(json.dumps(original))
            entry["uuid"] = str(uuidlib.uuid4())
            entry["image"] = image
            data["assemblies"][name] = entry
            return entry

    def assembly_delete(self, name: str) -> None:
        with self.edit() as data:
            self._assembly(data, name)
            users = sorted(d for d, dep in data["deployables"].items()
                           if name in dep["assemblies"])
            if users:
                raise CatalogueError(f"assembly {name!r} is part of deployable(s) "
                                     f"{', '.join(users)}: remove it from them first")
            del data["assemblies"][name]

    def assemblies(self) -> dict[str, dict[str, Any]]:
        return self.load()["assemblies"]

    def assembly(self, name: str) -> dict[str, Any]:
        return self._assembly(self.load(), name)

    @staticmethod
    def _assembly(data: dict[str, Any], name: str) -> dict[str, Any]:
        try:
            return data["assemblies"][name]
        except KeyError:
            raise CatalogueError(f"no assembly named {name!r}") from None

    def resource_add(self, resource: str, template: str, assembly: str) -> dict[str, Any]:
        check_name(resource, "resource")
        service = load_template(template)
        service.set("name", resource)
        with self.edit() as data:
            entry = self._assembly(data, assembly)
            if resource in entry["resources"]:
                raise CatalogueError(f"assembly {assembly!r} already has a resource "
                                     f"{resource!r}")
            added = {"template": template,
                     "service": etree.tostring(service, encoding="unicode"),
                     "escalation": None}
            entry["resources"][resource] = added
            return added

    def resource_remove(self, resource: str, assembly: str) -> None:
        with self.edit() as data:
            entry = self._assembly(data, assembly)
            if resource not in entry["resources"]:
                raise CatalogueError(f"assembly {assembly!r} has no resource {resource!r}")
            del entry["resources"][resource]

    def escalation_assembly_set(self, assembly: str, failures: str, period: str) -> None:
        setting = escalation(failures, period)
        with self.edit() as data:
            self._assembly(data, assembly)["escalation"] = setting

    def escalation_resource_set(self, assembly: str, resource: str, failures: str,
                                period: str) -> None:
        setting = escalation(failures, period)
        with self.edit() as data:
            resources = self._assembly(data, assembly)["resources"]
            if resource not in resources:
                raise CatalogueError(f"assembly {assembly!r} has no resource {resource!r}")
            resources[resource]["escalation"] = setting

    # --- deployables -------------------------------------------------------------------

    def deployable_create(self, name: str, infrastructure: str = "process") -> dict[str, Any]:
        check_name(name, "deployable")
        if infrastructure not in INFRASTRUCTURES:
            raise CatalogueError(f"infrastructure must be one of {', '.join(INFRASTRUCTURES)}")
        with self.edit() as data:
            if name in data["deployables"]:
                raise CatalogueError(f"deployable {name!r} already exists")
            entry = {"uuid": str(uuidlib.uuid4()), "infrastructure": infrastructure,
                     "assemblies": [], "escalation": None, "dependencies": []}
            data["deployables"][name] = entry
            return entry

    def deployable_delete(self, name: str) -> None:
        with self.edit() as data:
            self._deployable(data, name)
            del data["deployables"][name]

    def deployables(self) -> dict[str, dict[str, Any]]:
        return self.load()["deployables"]

    def deployable(self, name: str) -> dict[str, Any]:
        return self._deployable(self.load(), name)

    @staticmethod
    def _deployable(data: dict[str, Any], name: str) -> dict[str, Any]:
        try:
            return data["deployables"][name]
        except KeyError:
            raise CatalogueError(f"no deployable named {name!r} in the catalogue") from None

    def deployable_assembly_add(self, deployable: str, assembly: str) -> None:
        with self.edit() as data:
            entry = self._deployable(data, deployable)
            self._assembly(data, assembly)
            if assembly in entry["assemblies"]:
                raise CatalogueError(f"deployable {deployable!r} already has assembly "
                                     f"{assembly!r}")
            entry["assemblies"].append(assembly)

    def deployable_assembly_remove(self, deployable: str, assembly: str) -> None:
        with self.edit() as data:
            entry = self._deployable(data, deployable)
            if assembly not in entry["assemblies"]:
                raise CatalogueError(f"deployable {deployable!r} has no assembly {assembly!r}")
            entry["assemblies"].remove(assembly)
            entry["dependencies"] = [d for d in entry["dependencies"]
                                     if assembly not in (d["first"].split(":")[0],
                                                         d["then"].split(":")[0])]

    def deployable_dependency_add(self, deployable: str, first: str, then: str) -> str:
        """Order two resources: ``first`` (assembly:resource) starts before ``then``.

        Checked here as the CPE would check the whole deployable (no self-dependency, no
        cycle), so a mistake is refused now rather than at the next start or reload."""
        with self.edit() as data:
            entry = self._deployable(data, deployable)
            for ref in (first, then):
                asm, _, rsc = ref.partition(":")
                if asm not in entry["assemblies"]:
                    raise CatalogueError(f"{ref!r}: deployable {deployable!r} has no assembly "
                                         f"{asm!r} (write assembly:resource)")
                if rsc not in self._assembly(data, asm)["resources"]:
                    raise CatalogueError(f"{ref!r}: assembly {asm!r} has no resource {rsc!r}")
            if first == then:
                raise CatalogueError(f"{first!r} cannot depend on itself: name two different "
                                     "resources")
            if any(d["first"] == first and d["then"] == then for d in entry["dependencies"]):
                raise CatalogueError(f"deployable {deployable!r} already starts {first} "
                                     f"before {then}")
            ident = f"{first.replace(':', '_')}-before-{then.replace(':', '_')}"[:64]
            entry["dependencies"].append({"id": ident, "first": first, "then": then})
            if entry["assemblies"]:
                try:
                    Deployable.from_xml(self._document(data, deployable),
                                        source=f"deployable {deployable}", assign_uuids=False)
                except xmlsafe.XMLError as exc:
                    raise CatalogueError(f"dependency refused: {exc.message}") from None
            return ident

    def deployable_dependency_remove(self, deployable: str, first: str, then: str) -> None:
        """Drop the ordering ``first`` before ``then``."""
        with self.edit() as data:
            entry = self._deployable(data, deployable)
            kept = [d for d in entry["dependencies"]
                    if (d["first"], d["then"]) != (first, then)]
            if len(kept) == len(entry["dependencies"]):
                known = ", ".join(f"{d['first']} {d['then']}" for d in entry["dependencies"])
                raise CatalogueError(f"deployable {deployable!r} has no dependency {first} "
                                     f"before {then} (it has: {known or 'none'})")
            entry["dependencies"] = kept

    def dependencies(self, deployable: str) -> list[dict[str, str]]:
        return list(self.deployable(deployable)["dependencies"])

    # --- deployables started from a file ----------------------------------------------

    def file_started(self, name: str, path: str, infrastructure: str,
                     assemblies: list[str]) -> None:
        """Remember a deployable started from a file, for listings without the CPE."""
        with self.edit() as data:
            data["files"][name] = {"path": path, "infrastructure": infrastructure,
                                   "assemblies": assemblies}

    def file_forget(self, name: str) -> None:
        with self.edit() as data:
            data["files"].pop(name, None)

    def files(self) -> dict[str, dict[str, Any]]:
        return self.load()["files"]

    def document(self, name: str) -> str:
        """The ``<deployable>`` document of a catalogue deployable, ready for the CPE."""
        return self._document(self.load(), name)

    def _document(self, data: dict[str, Any], name: str) -> str:
        entry = self._deployable(data, name)
        if not entry["assemblies"]:
            raise CatalogueError(f"deployable {name!r} has no assemblies: "
                                 f"add some with deployable_assembly_add")
        root = etree.Element("deployable", name=name, uuid=entry["uuid"],
                             infrastructure=entry["infrastructure"])
        _set_escalation(root, entry.get("escalation"))
        assemblies = etree.SubElement(root, "assemblies")
        for asm_name in entry["assemblies"]:
            asm = self._assembly(data, asm_name)
            element = etree.SubElement(assemblies, "assembly", name=asm_name, uuid=asm["uuid"])
            if asm.get("image") and entry["infrastructure"] != "process":
                element.set("image", asm["image"])
            _set_escalation(element, asm.get("escalation"))
            services = etree.SubElement(element, "services")
            for resource in asm["resources"].values():
                service = xmlsafe.parse(resource["service"], source="catalogue")
                _set_escalation(service, resource.get("escalation"))
                services.append(service)
        if entry["dependencies"]:
            constraints = etree.SubElement(root, "constraints")
            for dep in entry["dependencies"]:
                etree.SubElement(constraints, "service_dependency", id=dep["id"],
                                 first=dep["first"], then=dep["then"])
        etree.indent(root, space="  ")
        return etree.tostring(root, encoding="unicode") + "\n"


def _set_escalation(element: etree._Element, setting: dict[str, Any] | None) -> None:
    if setting:
        element.set("escalation_failures", str(setting["failures"]))
        element.set("escalation_period", _number_text(setting["period"]))
