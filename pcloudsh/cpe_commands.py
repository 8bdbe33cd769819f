"""pcloudsh commands about deployables: the catalogue side and the CPE side, and events.

``deployable_start dep1`` builds the ``<deployable>`` document from the catalogue and sends it
to the CPE; given a file (``deployable_start xml/examples/webshop.xml``) it sends that file.
The ``events`` command is in ``event_commands``.
"""

from __future__ import annotations

from pathlib import Path

from lxml import etree

from pcloud import xmlsafe
from pcloudsh import display
from pcloudsh.catalogue import missing_program_warning
from pcloudsh.commands import NAME_RE, CommandError, Commands, _args, command


@command("<deployable> [process|qemu|libvirt|openstack]", "new", "infrastructure")
def cmd_deployable_create(self: Commands, args: list[str]) -> None:
    """Create a deployable in the catalogue; add assemblies with deployable_assembly_add."""
    name, *rest = _args(args, "deployable_create", 1, 2)
    self.catalogue.deployable_create(name, *rest)
    self.say(f"deployable {name} created")


@command("<deployable>", "deployable")
def cmd_deployable_delete(self: Commands, args: list[str]) -> None:
    """Delete a stopped deployable: from the CPE (its store, events and DPE files), then
    from the catalogue."""
    (name,) = _args(args, "deployable_delete", 1)
    in_catalogue = name in self.catalogue.deployables()
    try:
        self.cpe("deployable_delete", self._ref(name))
        known = True
    except CommandError as exc:
        if not str(exc).startswith("unknown_deployable:"):
            raise
        known = False
    from_file = name in self.catalogue.files()
    if not (known or in_catalogue or from_file):
        raise CommandError(f"no deployable named {name!r}")
    if in_catalogue:
        self.catalogue.deployable_delete(name)
    if from_file:
        self.catalogue.file_forget(name)
    self.say(f"deployable {name} deleted")


@command("")
def cmd_deployable_list(self: Commands, args: list[str]) -> None:
    """List the deployables of the catalogue and of the CPE, with their state.

    Without a CPE the catalogue and the deployables started from a file are still shown
    (states ``unknown``), but the command fails: a script must not read "not started" for a
    deployable that may well be running."""
    _args(args, "deployable_list", 0)
    own = self.catalogue.deployables()
    catalogue = {**self.catalogue.files(), **own}
    unreachable: CommandError | None = None
    try:
        listed = self.cpe("deployables_list", "<deployables/>")
    except CommandError as exc:
        listed, unreachable = None, exc
    cpe = {d.get("name"): d for d in (listed if listed is not None else [])}
    rows = []
    for name in sorted(set(catalogue) | set(cpe)):
        entry, known = catalogue.get(name), cpe.get(name)
        state = "unknown" if unreachable else (known.get("state") if known is not None
                                               else "not started")
        assemblies = infrastructure = "-"
        if known is not None and known.get("infrastructure"):
            infrastructure = known.get("infrastructure")
            assemblies = ",".join((known.get("assemblies") or "").split()) or "-"
        elif entry:
            infrastructure = entry["infrastructure"]
            assemblies = ",".join(entry["assemblies"]) or "-"
        rows.append({"name": name, "state": state, "assemblies": assemblies,
                     "infrastructure": infrastructure, "in_catalogue": name in own})
    self.rows(rows, (("name", "NAME"), ("state", "STATE"), ("infrastructure", "INFRA"),
                     ("assemblies", "ASSEMBLIES")))
    if unreachable is not None:
        raise CommandError(f"CPE not reachable, states unknown: {unreachable}")


@command("<deployable|FILE.xml>", "deployable")
def cmd_deployable_start(self: Commands, args: list[str]) -> None:
    """Start a deployable: the CPE stores it and starts its DPE, which starts everything."""
    (target,) = _args(args, "deployable_start", 1)
    document = self._document(target)
    try:
        result = self.cpe("deployable_start", document)
    except CommandError as exc:
        if str(exc).startswith("duplicate_deployable:"):
            name = xmlsafe.parse(document, source=target).get("name")
            raise CommandError(f"{exc} (to change it: deployable_reload {target}; to start "
                               f"it afresh: deployable_stop {name}, then deployable_start)"
                               ) from None
        raise
    _said(self, result, "deployable_start")
    if target not in self.catalogue.deployables() and result is not None:
        _remember_file(self, target, document)
    for warning in _missing_programs(self, target):
        self.say(warning)


def _remember_file(self: Commands, path: str, document: str) -> None:
    """Note a deployable started from a file in the catalogue (for listings without a CPE)."""
    root = xmlsafe.parse(document, source=path)
    self.catalogue.file_started(root.get("name"), str(Path(path).resolve()),
                                root.get("infrastructure") or "process",
                                [a.get("name") for a in root.iter("assembly")])


def _missing_programs(self: Commands, target: str) -> list[str]:
    """Warnings for a catalogue deployable on this host (``process``) whose resources'
    templates need a program that is not installed here: pcloud can tell only then."""
    entry = self.catalogue.deployables().get(target)
    if entry is None or entry["infrastructure"] != "process":
        return []
    warnings = []
    for assembly in entry["assemblies"]:
        for name, resource in self.catalogue.assembly(assembly)["resources"].items():
            warning = missing_program_warning(resource["template"], f"resource {assembly}/{name}")
            if warning:
                warnings.append(warning)
    return warnings


@command("<deployable>", "deployable")
def cmd_deployable_stop(self: Commands, args: list[str]) -> None:
    """Stop a deployable: resources in reverse order, then its assemblies."""
    (name,) = _args(args, "deployable_stop", 1)
    _said(self, self.cpe("deployable_stop", self._ref(name)), "deployable_stop")


@command("<deployable|FILE.xml>", "deployable")
def cmd_deployable_reload(self: Commands, args: list[str]) -> None:
    """Send a changed deployable to the CPE; only what changed is touched."""
    (target,) = _args(args, "deployable_reload", 1)
    _said(self, self.cpe("deployable_reload", self._document(target)), "deployable_reload")


@command("<deployable>", "deployable")
def cmd_deployable_status(self: Commands, args: list[str]) -> None:
    """Show the state of every assembly and resource, fail counts and last failures."""
    (name,) = _args(args, "deployable_status", 1)
    status = self.cpe("deployable_status", self._ref(name))
    if status is None:
        raise CommandError("the CPE sent an empty status")
    if self.json:
        self.say(display.as_json(display.status_json(status)))
    else:
        self.say(display.status_text(status))


@command("<deployable> <assembly> <resource>", "deployable", "assembly")
def cmd_resource_cleanup(self: Commands, args: list[str]) -> None:
    """Forget a resource's failures and its blocked state (e.g. after installing what it
    lacked): its DPE probes it again and starts it if it can run."""
    deployable, assembly, resource = _args(args, "resource_cleanup", 3)
    for what, name in (("deployable", deployable), ("assembly", assembly),
                       ("resource", resource)):
        if not NAME_RE.match(name):
            raise CommandError(f"invalid {what} name {name!r}: use letters, digits, _ and -")
    body = etree.tostring(etree.Element("resource", deployable=deployable, assembly=assembly,
                                        name=resource), encoding="unicode")
    result = self.cpe("resource_cleanup", body)
    if result is None:
        raise CommandError("the CPE sent an empty answer to resource_cleanup")
    self.say(display.as_json(dict(result.attrib)) if self.json else
             f"resource {deployable}/{assembly}/{resource} cleaned up: probing it again")


def _said(self: Commands, result: etree._Element | None, method: str) -> None:
    if result is None:
        raise CommandError(f"the CPE sent an empty answer to {method}")
    line = f"deployable {result.get('name')}: {result.get('state')}"
    reason = result.get("reason")
    if reason and reason.startswith("already "):
        line = f"deployable {result.get('name')}: {reason}"   # "stopping (already stopped)"
    elif reason:
        line += f" ({reason})"
    self.say(display.as_json(dict(result.attrib)) if self.json else line)


@command("<deployable> <assembly>", "deployable", "assembly")
def cmd_deployable_assembly_add(self: Commands, args: list[str]) -> None:
    """Add an assembly of the catalogue to a deployable."""
    deployable, assembly = _args(args, "deployable_assembly_add", 2)
    self.catalogue.deployable_assembly_add(deployable, assembly)
    self.say(f"assembly {assembly} added to deployable {deployable}")
    self.reload_hint(deployable=deployable)


@command("<deployable> <assembly>", "deployable", "assembly")
def cmd_deployable_assembly_remove(self: Commands, args: list[str]) -> None:
    """Remove an assembly from a deployable (and the dependencies that name it)."""
    deployable, assembly = _args(args, "deployable_assembly_remove", 2)
    self.catalogue.deployable_assembly_remove(deployable, assembly)
    self.say(f"assembly {assembly} removed from deployable {deployable}")
    self.reload_hint(deployable=deployable)


@command("<deployable>", "deployable")
def cmd_deployable_assembly_list(self: Commands, args: list[str]) -> None:
    """List the assemblies of a deployable with their resources."""
    (deployable,) = _args(args, "deployable_assembly_list", 1)
    entry = self.catalogue.deployable(deployable)
    assemblies = self.catalogue.assemblies()
    rows = [{"name": a, "uuid": assemblies.get(a, {}).get("uuid"),
             "resources": ",".join(assemblies.get(a, {}).get("resources", {})) or "-"}
            for a in entry["assemblies"]]
    self.rows(rows, (("name", "ASSEMBLY"), ("uuid", "UUID"), ("resources", "RESOURCES")))


@command("<deployable> <assembly:resource> <assembly:resource>", "deployable")
def cmd_deployable_dependency_add(self: Commands, args: list[str]) -> None:
    """Start the first resource before the second (also across assemblies)."""
    deployable, first, then = _args(args, "deployable_dependency_add", 3)
    ident = self.catalogue.deployable_dependency_add(deployable, first, then)
    self.say(f"dependency {ident}: {first} starts before {then}")
    self.reload_hint(deployable=deployable)


@command("<deployable> <assembly:resource> <assembly:resource>", "deployable")
def cmd_deployable_dependency_remove(self: Commands, args: list[str]) -> None:
    """Drop a start order added with deployable_dependency_add."""
    deployable, first, then = _args(args, "deployable_dependency_remove", 3)
    self.catalogue.deployable_dependency_remove(deployable, first, then)
    self.say(f"dependency removed: {first} no longer starts before {then}")
    self.reload_hint(deployable=deployable)


@command("<deployable>", "deployable")
def cmd_deployable_dependency_list(self: Commands, args: list[str]) -> None:
    """List the start orders of a deployable."""
    (deployable,) = _args(args, "deployable_dependency_list", 1)
    self.rows(self.catalogue.dependencies(deployable),
              (("id", "ID"), ("first", "FIRST"), ("then", "THEN")))


@command("<deployable>", "deployable")
def cmd_deployable_show(self: Commands, args: list[str]) -> None:
    """Print the <deployable> document deployable_start would send."""
    (deployable,) = _args(args, "deployable_show", 1)
    self.say(self.catalogue.document(deployable).rstrip())
