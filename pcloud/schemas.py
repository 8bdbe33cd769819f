"""RelaxNG validation of every pcloud XML document, with errors a person can act on.

libxml2's RelaxNG messages are often vague ("Element service failed to validate attributes",
no line). When a document fails, this module reads the schema itself to say which attribute
is missing, unknown or malformed, and on which line; libxml2's message is the fallback.
"""

from __future__ import annotations

import copy
import functools
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path

from lxml import etree

from pcloud import xmlsafe
from pcloud.paths import data_file
from pcloud.xmlsafe import XMLError

RNG_NS = "http://relaxng.org/ns/structure/1.0"
XSD_TYPES = "http://www.w3.org/2001/XMLSchema-datatypes"
_R = f"{{{RNG_NS}}}"

#: Every schema in schemas/, by name (file name without .rng).
SCHEMAS = (
    "deployable", "service", "deployable_ref", "resource_ref", "deployable_status",
    "deployables",
    "event", "event_raise", "events", "response", "heartbeat", "report", "resource_op",
    "op_result", "resources", "agent",
)

#: Root elements whose name alone picks the schema.
_BY_ROOT = {
    "service": "service", "events": "events", "deployables": "deployables",
    "response": "response", "heartbeat": "heartbeat", "report": "report",
    "resource_op": "resource_op", "op_result": "op_result", "resources": "resources",
    "agent": "agent",
}

#: What a value of each named datatype must look like, for error messages.
_TYPE_WORDS = {
    "name.type": "letters, digits, '_' or '-' (1 to 64 characters)",
    "name-or-dash.type": "a name (letters, digits, '_' or '-') or '-'",
    "uuid.type": "an identifier without blanks (at most 64 characters)",
    "time.type": "an ISO 8601 time such as 2026-11-21T10:00:00.123Z",
    "seconds.type": "a positive number of seconds",
    "count.type": "a positive integer",
    "uint.type": "a non-negative integer",
    "int.type": "an integer",
    "text.type": "text of at most 4096 characters",
    "service-ref.type": "assembly:service, e.g. db:mysqld",
}


def schema_path(name: str) -> Path:
    """Return the .rng file of one schema."""
    if name not in SCHEMAS:
        raise ValueError(f"unknown schema {name!r}")
    return data_file("schemas", f"{name}.rng")


_validators: dict[str, tuple[etree.RelaxNG, threading.Lock]] = {}
_validators_lock = threading.Lock()


def _validator(name: str) -> tuple[etree.RelaxNG, threading.Lock]:
    """The shared validator of a schema (compiled once, under a lock: first uses may race)
    and its lock. A validator keeps the errors of its last run in ``error_log``, so
    validating and reading them must be one step: CPE workers and the dispatcher share it."""
    with _validators_lock:
        entry = _validators.get(name)
        if entry is None:
            compiled = etree.RelaxNG(etree.parse(str(schema_path(name))))
            entry = _validators[name] = (compiled, threading.Lock())
        return entry


def _compiled(name: str) -> etree.RelaxNG:
    return _validator(name)[0]


def _errors(name: str, root: etree._Element) -> list | None:
    """Validate with the shared validator: None when valid, else libxml2's errors."""
    schema, lock = _validator(name)
    with lock:
        return None if schema.validate(root) else list(schema.error_log)


def schema_for(root: etree._Element) -> str:
    """Name the schema that applies to a document, from its root element.

    ``<deployable>`` is the full document when it has ``<assemblies>``, a status result when
    it has a ``state`` or ``<assembly>`` children, and a bare reference when it only has a
    name; an ``<event>`` without ``seq`` is an ``event_raise`` request.
    """
    tag = root.tag if isinstance(root.tag, str) else ""
    if tag == "deployable":
        children = {child.tag for child in root if isinstance(child.tag, str)}
        if "assemblies" in children:
            return "deployable"
        if "state" in root.attrib or "assembly" in children:
            return "deployable_status"
        if not children and set(root.attrib) <= {"name"}:
            return "deployable_ref"
        return "deployable"
    if tag == "event":
        return "event" if "seq" in root.attrib or "time" in root.attrib else "event_raise"
    if tag in _BY_ROOT:
        return _BY_ROOT[tag]
    raise XMLError(f'unknown document element "{tag or root.tag}": not a pcloud document',
                   root.sourceline, _source_of(root))


def validate(root: etree._Element, name: str | None = None, source: str | None = None) -> str:
    """Validate a parsed document against schema ``name`` (detected when None).

    Returns the schema name. Raises XMLError with the first problem and its line. A
    successful ``<response>`` also has its result validated when pcloud knows its schema.
    """
    source = source or _source_of(root)
    if name is None:
        name = schema_for(root)
    errors = _errors(name, root)
    if errors is not None:
        message, line = _explain(name, root, errors)
        raise XMLError(message, line, source)
    if name == "response" and root.get("rc") == "0" and len(root):
        result = root[0]
        try:
            inner = schema_for(result)
        except XMLError:
            return name
        validate(result, inner, source)
    return name


def load(path_or_text: str | bytes | Path, source: str | None = None
         ) -> tuple[str, etree._Element]:
    """Parse, detect and validate a document given as XML text or as a path.

    A ``str`` that does not start with ``<`` is taken as a path. Returns
    ``(schema name, root element)``; raises XMLError (also for an unreadable file).
    """
    if isinstance(path_or_text, Path) or (
            isinstance(path_or_text, str) and not path_or_text.lstrip().startswith("<")):
        return load_file(path_or_text, source)
    root = xmlsafe.parse(path_or_text, source=source)
    return validate(root, None, source), root


def load_file(path: str | Path, source: str | None = None) -> tuple[str, etree._Element]:
    """``load`` for a file; a missing or unreadable file is an XMLError without a line."""
    source = source or str(path)
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise XMLError(f"cannot read file: {exc.strerror or exc}", None, source) from None
    root = xmlsafe.parse(data, source=source)
    return validate(root, None, source), root


def _source_of(root: etree._Element) -> str | None:
    url = root.getroottree().docinfo.URL
    return url or None


# --- explaining failures -------------------------------------------------------------------

@dataclass
class _AttrSpec:
    required: bool
    patterns: list[etree._Element] = field(default_factory=list)


@dataclass
class _ElementSpec:
    attrs: dict[str, _AttrSpec] = field(default_factory=dict)
    open_attrs: bool = False
    required_children: set[str] = field(default_factory=set)


class _Grammar:
    """The element and attribute rules of one schema, read from its .rng files."""

    def __init__(self, name: str) -> None:
        self.defines: dict[str, etree._Element] = {}
        self.elements: dict[str, list[_ElementSpec]] = {}
        top = self._load(schema_path(name))
        for pattern in self._reachable(list(top.iter(_R + "start"))):
            for element in pattern.iter(_R + "element"):
                self._add_element(element)
        self._checkers: dict[int, etree.RelaxNG] = {}

    def _load(self, path: Path) -> etree._Element:
        root = etree.parse(str(path)).getroot()
        for define in root.iter(_R + "define"):
            self.defines.setdefault(define.get("name"), define)
        for include in root.iter(_R + "include"):
            self._load(path.parent / include.get("href"))
        return root

    def _reachable(self, starts: list[etree._Element]) -> list[etree._Element]:
        """The start patterns and every define they reach: elements of other documents
        sharing common.rng (e.g. another ``<resource>``) must not blur the rules."""
        found: dict[str, etree._Element] = {}
        todo = list(starts)
        while todo:
            pattern = todo.pop()
            for ref in pattern.iter(_R + "ref"):
                name = ref.get("name")
                if name not in found and name in self.defines:
                    found[name] = self.defines[name]
                    todo.append(self.defines[name])
        return list(starts) + list(found.values())

    def _add_element(self, element: etree._Element) -> None:
        name = element.get("name")
        if not name:
            return
        spec = _ElementSpec()
        self._walk(element, spec, required=True, seen=set())
        self.elements.setdefault(name, []).append(spec)

    def _walk(self, node: etree._Element, spec: _ElementSpec, required: bool,
              seen: set[str]) -> None:
        for child in node:
            if not isinstance(child.tag, str):
                continue
            tag = child.tag[len(_R):] if child.tag.startswith(_R) else ""
            if tag == "attribute":
                self._add_attribute(child, spec, required)
            elif tag == "element":
                if required and child.get("name"):
                    spec.required_children.add(child.get("name"))
            elif tag == "ref":
                ref = child.get("name")
                if ref not in seen and ref in self.defines:
                    self._walk(self.defines[ref], spec, required, seen | {ref})
            elif tag in ("optional", "zeroOrMore", "choice"):
                self._walk(child, spec, False, seen)
            elif tag in ("group", "interleave", "oneOrMore"):
                self._walk(child, spec, required, seen)

    def _add_attribute(self, attribute: etree._Element, spec: _ElementSpec,
                       required: bool) -> None:
        name = attribute.get("name")
        if not name:
            spec.open_attrs = True
            return
        content = [c for c in attribute if isinstance(c.tag, str)]
        entry = spec.attrs.setdefault(name, _AttrSpec(required=required))
        entry.required = entry.required and required
        if content:
            entry.patterns.append(content[0])

    def value_ok(self, pattern: etree._Element, value: str) -> bool:
        """Whether ``value`` matches one attribute's datatype pattern."""
        checker = self._checkers.get(id(pattern))
        if checker is None:
            grammar = etree.Element(_R + "grammar", nsmap={None: RNG_NS},
                                    datatypeLibrary=XSD_TYPES)
            start = etree.SubElement(grammar, _R + "start")
            element = etree.SubElement(start, _R + "element", name="x")
            attribute = etree.SubElement(element, _R + "attribute", name="a")
            attribute.append(self._inline(pattern, set()))
            checker = etree.RelaxNG(grammar)
            self._checkers[id(pattern)] = checker
        return bool(checker.validate(_value_doc(value)))

    def _inline(self, pattern: etree._Element, seen: set[str]) -> etree._Element:
        result = etree.Element(_R + "group")
        result.append(copy.deepcopy(pattern))
        for ref in list(result.iter(_R + "ref")):
            name = ref.get("name")
            if name in seen or name not in self.defines:
                continue
            group = etree.Element(_R + "group")
            for child in self.defines[name]:
                if isinstance(child.tag, str):
                    group.append(self._inline(child, seen | {name}))
            ref.getparent().replace(ref, group)
        return result

    def describe(self, pattern: etree._Element) -> str:
        """Words for what a pattern accepts: a named type or a list of values."""
        if pattern.tag == _R + "ref":
            name = pattern.get("name")
            if name in _TYPE_WORDS:
                return _TYPE_WORDS[name]
            define = self.defines.get(name)
            inner = [c for c in define if isinstance(c.tag, str)] if define is not None else []
            return self.describe(inner[0]) if len(inner) == 1 else "a valid value"
        values = [v.text or "" for v in pattern.iter(_R + "value")]
        if values and pattern.tag in (_R + "choice", _R + "value"):
            return "one of " + ", ".join(values)
        if pattern.tag == _R + "data":
            return f"a valid {pattern.get('type')}"
        return "a valid value"


def _value_doc(value: str) -> etree._Element:
    element = etree.Element("x")
    element.set("a", value)
    return element


@functools.cache
def _grammar(name: str) -> _Grammar:
    return _Grammar(name)


def _attribute_problem(grammar: _Grammar, element: etree._Element) -> str | None:
    specs = grammar.elements.get(element.tag) if isinstance(element.tag, str) else None
    if not specs:
        return None
    tag = element.tag
    for attr, value in element.attrib.items():
        known = [s.attrs[attr] for s in specs if attr in s.attrs]
        if not known:
            if any(s.open_attrs for s in specs):
                continue
            return f'element "{tag}" has unknown attribute "{attr}"'
        patterns = [p for spec in known for p in spec.patterns]
        if patterns and not any(grammar.value_ok(p, value) for p in patterns):
            return (f'element "{tag}" attribute "{attr}" has invalid value "{value}": '
                    f"expected {grammar.describe(patterns[0])}")
    for attr in sorted(set.intersection(*(
            {n for n, a in s.attrs.items() if a.required} for s in specs))):
        if attr not in element.attrib:
            return f'element "{tag}" missing required attribute "{attr}"'
    children = {c.tag for c in element if isinstance(c.tag, str)}
    for child in sorted(set.intersection(*(s.required_children for s in specs))):
        if child not in children:
            return f'element "{tag}" missing required element "{child}"'
    return None


#: libxml2 errors that name the real problem (others only name a failing ancestor).
_SPECIFIC = {"RELAXNG_ERR_ELEMWRONG", "RELAXNG_ERR_ELEMNAME", "RELAXNG_ERR_TEXTWRONG",
             "RELAXNG_ERR_NOELEM", "RELAXNG_ERR_EXTRACONTENT", "RELAXNG_ERR_INVALIDATTR"}
_FAILED = re.compile(r"Element (\S+) failed to validate (content|attributes)")


def _explain(name: str, root: etree._Element, log: list) -> tuple[str, int | None]:
    """The first problem of an invalid document: (message, line)."""
    if name == "response":
        rc = root.get("rc")
        has_error = root.find("error") is not None
        if rc not in (None, "0") and not has_error:
            return (f'element "response" with rc="{rc}" needs an <error code message/> child',
                    root.sourceline)
        if rc == "0" and has_error:
            return 'element "response" with rc="0" must not hold an <error>', root.sourceline
    grammar = _grammar(name)
    ours: tuple[str, int | None] | None = None
    for element in root.iter():
        problem = _attribute_problem(grammar, element)
        if problem:
            ours = (problem, element.sourceline)
            break
    first = next((e for e in log if e.line and e.line > 0), None)
    theirs = (_humanize(first), first.line) if first is not None else None
    if ours and (first is None or first.type_name not in _SPECIFIC
                 or (ours[1] or 0) <= first.line):
        return ours
    if theirs:
        return theirs
    if log:
        return _humanize(log[0]), None
    return f"document does not match the {name} schema", root.sourceline


def _humanize(error) -> str:
    """Rewrite one libxml2 RelaxNG message in pcloud's wording."""
    message = error.message.strip()
    words = message.split()
    kind = error.type_name
    parent = _parent_name(error.path)
    if kind == "RELAXNG_ERR_ELEMWRONG" and len(words) >= 5:
        return f'unexpected element "{words[4]}" inside "{parent}"'
    if kind == "RELAXNG_ERR_ELEMNAME" and message.startswith("Expecting element"):
        expected, _, got = message[len("Expecting element "):].partition(", got ")
        return f'expected element "{expected}", got "{got}"'
    if kind == "RELAXNG_ERR_TEXTWRONG":
        return f'element "{_last_name(error.path)}" must not contain text'
    if kind == "RELAXNG_ERR_NOELEM":
        return f'element "{_last_name(error.path)}" is missing a required child element'
    found = _FAILED.match(message)
    if found:
        return f'element "{found.group(1)}" has invalid {found.group(2)}'
    return message[0].lower() + message[1:] if message else "document is not valid"


def _last_name(path: str | None) -> str:
    if not path:
        return "?"
    return path.rstrip("/").rsplit("/", 1)[-1].split("[", 1)[0]


def _parent_name(path: str | None) -> str:
    if not path or path.count("/") < 2:
        return "document"
    return _last_name(path.rstrip("/").rsplit("/", 1)[0])
