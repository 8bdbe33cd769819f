"""Schemas accept every good document and example, and reject bad ones with the right line."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from lxml import etree

from pcloud import schemas, states, xmlsafe
from pcloud.events import EventType
from pcloud.xmlsafe import XMLError
from pcloudsh import validate as validate_cmd

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data"
GOOD = sorted((DATA / "good").glob("*.xml"))
BAD = sorted((DATA / "bad").glob("*.xml"))
EXAMPLES = sorted((ROOT / "xml" / "examples").glob("*.xml"))
TEMPLATES = sorted((ROOT / "xml" / "templates").glob("*.xml"))
EXPECT = re.compile(r"<!-- \S+ expect: (\d+): (.*) -->")


def test_every_schema_compiles():
    for name in schemas.SCHEMAS:
        assert schemas._compiled(name) is not None
    on_disk = {p.stem for p in (ROOT / "schemas").glob("*.rng")} - {"common"}
    assert on_disk == set(schemas.SCHEMAS)


@pytest.mark.parametrize("path", GOOD + EXAMPLES, ids=lambda p: p.name)
def test_good_documents_validate(path):
    name, root = schemas.load(path)
    assert name in schemas.SCHEMAS
    assert root is not None


@pytest.mark.parametrize("path", TEMPLATES, ids=lambda p: p.name)
def test_templates_are_service_fragments(path):
    name, _ = schemas.load(path)
    assert name == "service"


def test_design_examples_validate_as_their_schemas():
    assert schemas.load(DATA / "design-deployable.xml")[0] == "deployable"
    assert schemas.load(DATA / "design-event.xml")[0] == "event"


@pytest.mark.parametrize("path", BAD, ids=lambda p: p.name)
def test_bad_documents_fail_with_expected_line_and_message(path):
    line, message = EXPECT.match(path.read_text().splitlines()[0]).groups()
    with pytest.raises(XMLError) as caught:
        validate_cmd.check(str(path))
    assert caught.value.line == int(line)
    assert caught.value.message == message


@pytest.mark.parametrize("text, expected", [
    ('<deployable name="d"><assemblies/></deployable>', "deployable"),
    ('<deployable name="d"/>', "deployable_ref"),
    ('<deployable name="d" state="running"/>', "deployable_status"),
    ('<deployable name="d"><assembly name="a" state="running"/></deployable>',
     "deployable_status"),
    ('<deployable name="d" infrastructure="process"/>', "deployable"),
    ('<event seq="1" time="2026-11-21T10:00:00.000Z" type="escalation" deployable="d"/>',
     "event"),
    ('<event type="config_error" deployable="d"/>', "event_raise"),
    ("<events/>", "events"),
    ("<deployables/>", "deployables"),
    ('<response rc="0"/>', "response"),
    ("<resources/>", "resources"),
    ("<agent/>", "agent"),
    ('<service name="s" class="lsb" type="cron"/>', "service"),
])
def test_schema_for_detects_from_root(text, expected):
    assert schemas.schema_for(xmlsafe.parse(text)) == expected


def test_schema_for_unknown_root_raises():
    with pytest.raises(XMLError, match='unknown document element "cib"'):
        schemas.schema_for(xmlsafe.parse("<cib/>"))


def test_validate_against_named_schema_reports_line_and_source():
    root = xmlsafe.parse('<deployable name="d">\n<assemblies>\n<assembly/>\n</assemblies>'
                         "\n</deployable>", source="x.xml")
    with pytest.raises(XMLError) as caught:
        schemas.validate(root, "deployable", source="x.xml")
    assert (caught.value.line, caught.value.source) == (3, "x.xml")
    assert caught.value.message == 'element "assembly" missing required attribute "name"'
    assert str(caught.value) == 'x.xml:3: element "assembly" missing required attribute "name"'


def test_names_are_limited_to_64_identifier_characters():
    ok = '<deployable name="%s"/>' % ("a" * 64)
    schemas.validate(xmlsafe.parse(ok), "deployable_ref")
    for bad in ("a" * 65, "dep.1", "dep 1", "dép", ""):
        with pytest.raises(XMLError, match='attribute "name" has invalid value'):
            schemas.validate(xmlsafe.parse(f'<deployable name="{bad}"/>'), "deployable_ref")


def test_sub_second_probe_and_heartbeat_intervals_are_accepted():
    text = ('<service name="s" class="process"><parameters><parameter name="command" '
            'value="sleep 9"/></parameters><probe kind="exec" command="true" interval="0.1" '
            'timeout="0.05"/></service>')
    assert schemas.load(text)[0] == "service"


def test_response_with_error_and_result_both_refused():
    with pytest.raises(XMLError, match='rc="0" must not hold'):
        schemas.load('<response rc="0"><error code="x" message="m"/></response>')


def test_response_result_of_unknown_kind_is_accepted():
    assert schemas.load('<response rc="0"><graph id="1"><x/></graph></response>')[0] == \
        "response"


def test_load_missing_file_is_one_line_error(tmp_path):
    with pytest.raises(XMLError, match="cannot read file") as caught:
        schemas.load(tmp_path / "nope.xml")
    assert caught.value.line is None


def _values(schema_file: str, define: str) -> set[str]:
    tree = etree.parse(str(ROOT / "schemas" / schema_file))
    ns = {"r": schemas.RNG_NS}
    found = tree.xpath(f"//r:define[@name='{define}']//r:value/text()", namespaces=ns)
    return set(found)


def test_state_vocabularies_match_states_module():
    assert _values("common.rng", "deployable-state.type") == {s.value for s in
                                                              states.DeployableState}
    assert _values("common.rng", "assembly-state.type") == {s.value for s in
                                                            states.AssemblyState}
    assert _values("common.rng", "resource-state.type") == {s.value for s in
                                                            states.ResourceState}


def test_event_types_match_events_module():
    assert _values("common.rng", "event-type.type") == {t.value for t in EventType}


def test_concurrent_validations_keep_their_own_errors():
    """One validator per schema is shared by all threads: each refusal must carry the error
    of its own document (its own bad value and line), never another thread's."""
    import threading

    def document(n: int, good: bool) -> str:
        name = f"d{n}" if good else f"bad.{n}"
        return "\n" * (n % 7) + f'<deployable name="{name}"/>'

    failures: list[str] = []
    start = threading.Barrier(8)

    def worker(t: int) -> None:
        try:
            check(t)
        except Exception as exc:  # a crash is a failure too, not a thread warning
            failures.append(f"thread {t} crashed: {type(exc).__name__}: {exc}")

    def check(t: int) -> None:
        start.wait()
        for i in range(300):
            n = t * 1000 + i
            good = i % 2 == 0
            root = xmlsafe.parse(document(n, good))
            try:
                schemas.validate(root, "deployable_ref")
            except XMLError as exc:
                if good:
                    failures.append(f"good document {n} refused: {exc}")
                elif f"bad.{n}" not in exc.message or exc.line != 1 + n % 7:
                    failures.append(f"document {n} got line {exc.line}: {exc.message}")
            else:
                if not good:
                    failures.append(f"bad document {n} accepted")

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not failures, failures[:5]
