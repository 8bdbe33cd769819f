"""Every pcloudsh command, usable from the interactive shell and one-shot alike.

A command is a method ``cmd_<name>(args)`` registered with its usage line and the kind of each
argument (for completion). It prints through ``self.out`` and raises ``CommandError`` with a
one-line message on failure; the shell prints it and carries on, the one-shot CLI exits 1.
"""

from __future__ import annotations

import difflib
import fcntl
import os
import socket
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import urlsplit

from lxml import etree

from pcloud import config, xmlsafe
from pcloud.bus import Bus, BusError, BusTimeout, MethodError
from pcloudsh import display, validate
from pcloudsh.catalogue import (
    NAME_RE,
    Catalogue,
    CatalogueError,
    load_template,
    missing_program_warning,
    template_names,
    template_needs,
)

CPE_QUEUE = "pcloud.cpe"
CALL_TIMEOUT = 15.0
#: A TCP connect to the broker before the AMQP one: a refused port is reported at once.
PROBE_TIMEOUT = 3.0


class CommandError(Exception):
    """A command failed; the message is one line for the operator."""


@dataclass(frozen=True)
class Spec:
    """A command's usage and the completion kind of each positional argument."""

    name: str
    usage: str
    kinds: tuple[str, ...]
    func: Callable[[Any, list[str]], None]


REGISTRY: dict[str, Spec] = {}


def command(usage: str, *kinds: str) -> Callable[[Callable[[Any, list[str]], None]],
                                                  Callable[[Any, list[str]], None]]:
    def register(func: Callable[[Any, list[str]], None]) -> Callable[[Any, list[str]], None]:
        name = func.__name__.removeprefix("cmd_")
        REGISTRY[name] = Spec(name, f"{name} {usage}".strip(), kinds, func)
        return func
    return register


def _args(args: list[str], spec_name: str, low: int, high: int | None = None) -> list[str]:
    high = low if high is None else high
    if not low <= len(args) <= high:
        raise CommandError(f"usage: {REGISTRY[spec_name].usage}")
    return args


def check_deployable_name(name: str) -> str:
    """Refuse a bad name here: the CPE would only say which XML attribute is invalid."""
    if not NAME_RE.match(name):
        raise CommandError(f"invalid deployable name {name!r}: use letters, digits, _ and -")
    return name


def check_broker_url(url: str) -> str:
    """Refuse at once what is not an AMQP URL, instead of waiting for a connection to fail."""
    scheme = urlsplit(url).scheme
    if scheme not in ("amqp", "amqps"):
        shown = f"{scheme}://…" if scheme else repr(url.split("@")[-1])
        raise CommandError(f"the broker URL must be amqp://… or amqps://…, not {shown}")
    return url


def suggestion(name: str, known: list[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest known names, or ''."""
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
    if not close:
        close = [k for k in known if name and (k.startswith(name) or name in k)][:3]
    if not close:
        return ""
    return f" (did you mean {' or '.join(repr(c) for c in close)}?)"


def cped_down(state_dir: Path) -> bool:
    """True when a cped has run on ``state_dir`` and none holds it now: its lock file is
    there and free. (No lock file: no local cped to judge, the call's timeout decides.)"""
    try:
        fd = os.open(state_dir / "cped.lock", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return False
    finally:
        os.close(fd)
    return True


def refused(url: str) -> str | None:
    """Why no TCP connection to the broker of ``url`` is possible right now, or None (it
    accepts, or it did not answer in time: the AMQP connection decides)."""
    parts = urlsplit(url)
    try:
        port = parts.port or (5671 if parts.scheme == "amqps" else 5672)
    except ValueError:
        return "invalid port"
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", port),
                                      timeout=PROBE_TIMEOUT):
            return None
    except TimeoutError:
        return None
    except OSError as exc:
        return (exc.strerror or str(exc)).lower()


def _images() -> Any:
    try:
        from pcloudsh import images
    except ImportError as exc:
        raise CommandError(f"image commands are not yet available ({exc})") from None
    return images


@contextmanager
def _image_errors() -> Iterator[Any]:
    """The images module, with its ImageError turned into the operator's one-line error."""
    images = _images()
    try:
        yield images
    except images.ImageError as exc:
        raise CommandError(str(exc)) from None


class Commands:
    """The state one shell session shares between commands: catalogue, bus, output mode."""

    def __init__(self, state_dir: Path | None = None, out: TextIO | None = None,
                 json_output: bool = False, broker_url: str | None = None) -> None:
        self.state_dir = state_dir or config.state_dir()
        self.catalogue = Catalogue(self.state_dir / "pcloudsh")
        self.out = out or sys.stdout
        self.json = json_output
        self.broker_url = broker_url
        self._bus: Bus | None = None
        self._noted_default = False
        self._bus_lock = threading.Lock()
        self._print_lock = threading.Lock()

    def close(self) -> None:
        if self._bus is not None:
            self._bus.close()
            self._bus = None

    def run(self, name: str, args: list[str]) -> None:
        spec = REGISTRY.get(name)
        if spec is None:
            hint = suggestion(name, [*REGISTRY, "help", "quit", "watch"])
            raise CommandError(f"unknown command {name!r}{hint}; try 'help'")
        try:
            spec.func(self, args)
        except CatalogueError as exc:
            raise CommandError(str(exc)) from None

    def note(self, text: str) -> None:
        """A remark beside a command's output: stderr here, above the prompt in the shell."""
        print(f"pcloudsh: note: {text}", file=sys.stderr, flush=True)

    def say(self, text: str, end: str = "\n") -> None:
        """Print one piece of output whole (shell commands and live events share the
        terminal)."""
        with self._print_lock:
            print(text, file=self.out, end=end, flush=True)

    def rows(self, rows: list[dict[str, Any]], columns: display.Columns) -> None:
        self.say(display.as_json(rows) if self.json else display.table(rows, columns))

    # --- the CPE -----------------------------------------------------------------------

    def connected(self) -> bool:
        """Whether the session's bus exists and has its broker connection now."""
        return self._bus is not None and self._bus.connected

    def bus(self) -> Bus:
        with self._bus_lock:
            return self._open_bus()

    def _open_bus(self) -> Bus:
        if self._bus is None:
            if self.broker_url:
                url, source = self.broker_url, "option"
            else:
                url, source = config.broker_choice()
            check_broker_url(url)
            if source == "default" and not self._noted_default:
                self._noted_default = True
                self.note(config.default_broker_note())
            why = refused(url)
            if why is not None:
                raise CommandError(config.unreachable(url, why))
            bus = Bus(url=url, name="pcloudsh")
            try:
                bus.start(timeout=5.0)
            except BusError as exc:
                bus.close()
                raise CommandError(config.unreachable(url, exc)) from None
            self._bus = bus
        return self._bus

    def cpe(self, method: str, body: str | etree._Element) -> etree._Element | None:
        if cped_down(self.state_dir):
            raise CommandError(f"cped is not running on {self.state_dir}: start it with "
                               f"'cped' (with PCLOUD_STATE_DIR={self.state_dir})")
        bus = self.bus()
        if not bus.connected:   # the shell's bus outlived its broker: say so, do not wait
            raise CommandError(config.unreachable(bus.url, refused(bus.url) or
                                                  "the connection is down, reconnecting"))
        try:
            return bus.call(CPE_QUEUE, method, body, timeout=CALL_TIMEOUT)
        except BusTimeout:
            if not bus.connected:
                raise CommandError(config.unreachable(bus.url, "the connection dropped during "
                                                      f"{method}")) from None
            raise CommandError(f"the CPE did not answer {method} within {CALL_TIMEOUT:.0f} s: "
                               "is cped running?") from None
        except MethodError as exc:
            raise CommandError(f"{exc.code}: {exc.message}") from None
        except BusError as exc:
            raise CommandError(f"bus error: {exc}") from None

    def cpe_states(self) -> dict[str, str]:
        result = self.cpe("deployables_list", "<deployables/>")
        return {d.get("name"): d.get("state") for d in (result if result is not None else [])}

    def _document(self, target: str) -> str:
        """A catalogue deployable's document, or a deployable XML file checked here first.

        The file is validated locally, as ``validate`` does, so a mistake comes back as
        ``FILE:LINE: message`` rather than as the CPE's view of an anonymous request body.
        """
        if target.endswith(".xml") or "/" in target:
            try:
                text = Path(target).read_text(encoding="utf-8")
            except OSError as exc:
                raise CommandError(f"cannot read {target}: {(exc.strerror or str(exc)).lower()}"
                                   ) from None
            except UnicodeDecodeError:
                raise CommandError(f"{target}: not UTF-8 text") from None
            try:
                kind = validate.check(target)
            except xmlsafe.XMLError as exc:
                raise CommandError(validate.problem(exc, target)) from None
            if kind != "deployable":
                raise CommandError(f"{target}: a <{kind}> document, not a <deployable>")
            return text
        return self.catalogue.document(target)

    def _ref(self, name: str) -> str:
        return etree.tostring(etree.Element("deployable", name=check_deployable_name(name)),
                              encoding="unicode")

    # --- JEOS images -------------------------------------------------------------------

    @command("<distro> <arch>", "distro", "arch")
    def cmd_jeos_create(self, args: list[str]) -> None:
        """Build a JEOS image (debootstrap); takes a few minutes."""
        distro, arch = _args(args, "jeos_create", 2)
        with _image_errors() as images:
            image = images.jeos_create(distro, arch, self.catalogue.images_dir,
                                       progress=self.say)
        self.say(f"JEOS {image.name} ready in {image.path}")

    @command("")
    def cmd_jeos_list(self, args: list[str]) -> None:
        """List the JEOS images."""
        _args(args, "jeos_list", 0)
        images = _images()
        rows = [{"name": i.name, "distro": i.meta.get("distro"), "arch": i.meta.get("arch"),
                 "created": i.meta.get("created"), "path": str(i.path)}
                for i in images.jeos_list(self.catalogue.images_dir)]
        self.rows(rows, (("name", "NAME"), ("distro", "DISTRO"), ("arch", "ARCH"),
                         ("created", "CREATED")))

    @command("<jeos>", "jeos")
    def cmd_jeos_delete(self, args: list[str]) -> None:
        """Delete a JEOS image (refused while assemblies are built on it)."""
        (name,) = _args(args, "jeos_delete", 1)
        with _image_errors() as images:
            images.jeos_delete(name, self.catalogue.images_dir)
        self.say(f"JEOS {name} deleted")

    # --- assemblies --------------------------------------------------------------------

    def _built_jeos(self, jeos: str, arch: str | None) -> str | None:
        """The catalogue name of the JEOS image meant by the arguments, if one is built."""
        images = _images()
        names = [f"{jeos}-{arch}" if arch else jeos, _jeos_name(jeos, arch)]
        built = {i.name for i in images.jeos_list(self.catalogue.images_dir)}
        return next((n for n in names if n in built), None)

    @command("<assembly> <jeos|distro> [<arch>]", "new", "jeos", "arch")
    def cmd_assembly_create(self, args: list[str]) -> None:
        """Create an assembly from a JEOS; resources are added with assembly_resource_add.

        When that JEOS has been built (jeos_create), the assembly image is built on it too
        (about 20 s), for the qemu and libvirt infrastructures; otherwise only the catalogue
        entry is made, which the process infrastructure needs alone.
        """
        name, jeos, *rest = _args(args, "assembly_create", 2, 3)
        built = self._built_jeos(jeos, rest[0] if rest else None)
        if built is None:
            jeos = _jeos_name(jeos, rest[0] if rest else None)
            self.catalogue.assembly_create(name, jeos)
            self.say(f"assembly {name} created on JEOS {jeos} (no image: JEOS {jeos} is not "
                     "built, so only the process infrastructure can run it)")
            return
        if name in self.catalogue.assemblies():
            raise CommandError(f"assembly {name!r} already exists")
        with _image_errors() as images:
            image = images.assembly_create(name, built, self.catalogue.images_dir,
                                           broker_url=self.broker_url or config.broker_url(),
                                           progress=self.say)
        try:
            self.catalogue.assembly_create(name, built, str(image.path))
        except CatalogueError:
            images.assembly_delete(name, self.catalogue.images_dir)
            raise
        self.say(f"assembly {name} created on JEOS {built}, image {image.path}")

    def reload_hint(self, assembly: str | None = None, deployable: str | None = None) -> None:
        """Say that a catalogue change reaches a running deployable only through a reload."""
        users = [deployable] if deployable else sorted(
            d for d, entry in self.catalogue.deployables().items()
            if assembly in entry["assemblies"])
        for name in users:
            self.say(f"(if deployable {name} is running, it changes only with "
                     f"'deployable_reload {name}')")

    @command("<assembly> <new_assembly>", "assembly", "new")
    def cmd_assembly_clone(self, args: list[str]) -> None:
        """Copy an assembly, with its resources, under a new name and a fresh identity."""
        source, name = _args(args, "assembly_clone", 2)
        image = None
        if self.catalogue.assembly(source).get("image"):
            with _image_errors() as images:
                image = str(images.assembly_clone(source, name, self.catalogue.images_dir,
                                                  progress=self.say).path)
        self.catalogue.assembly_clone(source, name, image)
        self.say(f"assembly {name} cloned from {source}")

    @command("<assembly>", "assembly")
    def cmd_assembly_delete(self, args: list[str]) -> None:
        """Delete an assembly (refused while a deployable uses it)."""
        (name,) = _args(args, "assembly_delete", 1)
        had_image = self.catalogue.assembly(name).get("image")
        self.catalogue.assembly_delete(name)
        if had_image:
            with _image_errors() as images:
                images.assembly_delete(name, self.catalogue.images_dir)
        self.say(f"assembly {name} deleted")

    @command("")
    def cmd_assembly_list(self, args: list[str]) -> None:
        """List the assemblies."""
        _args(args, "assembly_list", 0)
        rows = [{"name": name, "uuid": a["uuid"], "jeos": a["jeos"],
                 "image": a.get("image") or "-",
                 "resources": ",".join(a["resources"]) or "-",
                 "escalation": _escalation(a.get("escalation"))}
                for name, a in sorted(self.catalogue.assemblies().items())]
        self.rows(rows, (("name", "NAME"), ("uuid", "UUID"), ("jeos", "JEOS"),
                         ("image", "IMAGE"), ("resources", "RESOURCES"),
                         ("escalation", "ESCALATION")))

    @command("<resource> <template> <assembly>", "new", "template", "assembly")
    def cmd_assembly_resource_add(self, args: list[str]) -> None:
        """Add a resource to an assembly from a resource template (see template_list)."""
        resource, template, assembly = _args(args, "assembly_resource_add", 3)
        packages, _ = template_needs(template)
        has_image = bool(self.catalogue.assembly(assembly).get("image"))
        if packages and has_image:
            with _image_errors() as images:      # the template's software into the VM image
                images.assembly_install(assembly, list(packages), self.catalogue.images_dir,
                                        progress=self.say)
        self.catalogue.resource_add(resource, template, assembly)
        self.say(f"resource {resource} ({template}) added to assembly {assembly}")
        # an assembly with an image runs in a VM, which has the program now; a process
        # deployable of it is still warned about this host at deployable_start
        warning = None if has_image else missing_program_warning(
            template, f"resource {assembly}/{resource}")
        if warning:
            self.say(warning)
        self.reload_hint(assembly)

    @command("<resource> <assembly>", "resource", "assembly")
    def cmd_assembly_resource_remove(self, args: list[str]) -> None:
        """Remove a resource from an assembly."""
        resource, assembly = _args(args, "assembly_resource_remove", 2)
        self.catalogue.resource_remove(resource, assembly)
        self.say(f"resource {resource} removed from assembly {assembly}")
        self.reload_hint(assembly)

    @command("<assembly>", "assembly")
    def cmd_assembly_resource_list(self, args: list[str]) -> None:
        """List the resources of an assembly."""
        (assembly,) = _args(args, "assembly_resource_list", 1)
        rows = []
        for name, r in self.catalogue.assembly(assembly)["resources"].items():
            service = xmlsafe.parse(r["service"], source="catalogue")
            rows.append({"name": name, "template": r["template"], "class": service.get("class"),
                         "type": service.get("type") or "-",
                         "monitor_interval": service.get("monitor_interval") or "-",
                         "escalation": _escalation(r.get("escalation"))})
        self.rows(rows, (("name", "NAME"), ("template", "TEMPLATE"), ("class", "CLASS"),
                         ("type", "TYPE"), ("monitor_interval", "MONITOR (s)"),
                         ("escalation", "ESCALATION")))

    @command("")
    def cmd_template_list(self, args: list[str]) -> None:
        """List the resource templates and the packages their services need."""
        _args(args, "template_list", 0)
        rows, broken = [], []
        for name in template_names():
            packages, here = template_needs(name)
            try:
                load_template(name)
                valid = "yes"
            except CatalogueError as exc:
                broken.append(str(exc))
                valid = "no"
            rows.append({"name": name, "needs": " ".join(packages) or "-",
                         "on_this_host": "yes" if here else "no", "valid": valid})
        self.rows(rows, (("name", "TEMPLATE"), ("needs", "NEEDS (Debian package)"),
                         ("on_this_host", "ON THIS HOST"), ("valid", "VALID")))
        for error in broken:
            self.note(error)
        if not self.json:
            self.say("Only templates that need nothing run out of the box. The process "
                     "infrastructure runs services\non this host (install the package here); "
                     "qemu and libvirt run them in the JEOS image.")

    @command("<assembly> <failures> <period_seconds>", "assembly")
    def cmd_escalation_assembly_set(self, args: list[str]) -> None:
        """Restart the whole deployable when the assembly fails FAILURES times in PERIOD."""
        assembly, failures, period = _args(args, "escalation_assembly_set", 3)
        self.catalogue.escalation_assembly_set(assembly, failures, period)
        self.say(f"assembly {assembly}: {failures} failures within {period} s escalate to "
                 "the deployable")
        self.reload_hint(assembly)

    @command("<assembly> <resource> <failures> <period_seconds>", "assembly", "resource")
    def cmd_escalation_resource_set(self, args: list[str]) -> None:
        """Restart the resource's assembly when it fails FAILURES times in PERIOD."""
        assembly, resource, failures, period = _args(args, "escalation_resource_set", 4)
        self.catalogue.escalation_resource_set(assembly, resource, failures, period)
        self.say(f"resource {assembly}/{resource}: {failures} failures within {period} s "
                 "escalate to its assembly")
        self.reload_hint(assembly)


def _jeos_name(jeos: str, arch: str | None) -> str:
    """One spelling per JEOS, the image catalogue's: ``debian12`` → ``debian-12-x86_64``.

    A distribution the image builder knows gets its canonical name (alias resolved, default
    architecture added); any other name is kept, with ``-<arch>`` when one is given.
    """
    literal = f"{jeos}-{arch}" if arch else jeos
    try:
        images = _images()
    except CommandError:
        return literal
    try:
        return images.jeos_name(jeos, arch or "x86_64")
    except images.ImageError:
        return literal


def _escalation(setting: dict[str, Any] | None) -> str:
    if not setting:
        return "-"
    period = float(setting["period"])
    return f"{setting['failures']} in {period:g}s"
