"""The deployable model: semantics the schema cannot check, uuids, round trip, diff."""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import pytest

from pcloud.deployable import (
    Dependency,
    Deployable,
    DeployableError,
    Probe,
    Service,
    diff,
)
from pcloud.xmlsafe import XMLError

ROOT = Path(__file__).resolve().parent.parent
DESIGN = (Path(__file__).resolve().parent / "data" / "design-deployable.xml").read_text()
WEBSHOP = (ROOT / "xml" / "examples" / "webshop.xml").read_text()


def _is_uuid(value: str | None) -> bool:
    try:
        uuid.UUID(value)
    except (TypeError, ValueError):
        return False
    return True


def test_design_example_loads_with_accessors():
    dep = Deployable.from_xml(DESIGN)
    assert dep.name == "dep1" and dep.infrastructure == "process"
    assert (dep.escalation_failures, dep.escalation_period) == (3, 3600)
    db = dep.assembly("db")
    assert db.heartbeat() == (1, 3)
    mysqld = db.service("mysqld")
    assert mysqld.agent == "ocf:heartbeat:mysql"
    assert mysqld.params == {"config": "/etc/mysql/my.cnf"}
    assert [(a.name, s.name) for a, s in dep.services()] == [("db", "mysqld"), ("web", "httpd")]
    assert dep.dependencies == (Dependency("db-first", "db", "mysqld", "web", "httpd"),)
    assert dep.constraints[0].first == "db:mysqld"
    with pytest.raises(KeyError):
        dep.assembly("nope")


def test_missing_and_placeholder_uuids_are_assigned():
    dep = Deployable.from_xml(DESIGN)
    ids = [dep.uuid] + [a.uuid for a in dep.assemblies] + [s.uuid for _, s in dep.services()]
    assert all(_is_uuid(i) for i in ids)
    assert len(set(ids)) == len(ids)
    assert 'uuid="…"' not in dep.to_xml()


def test_any_given_uuid_is_kept_verbatim():
    text = ('<deployable name="d" uuid="my-dep-0001"><assemblies>'
            '<assembly name="a" uuid="ABCDEF00-0000-4000-8000-0000000000AA">'
            '<services><service name="s" class="process" uuid="{svc-1}">'
            '<parameters><parameter name="command" value="sleep 1"/></parameters>'
            '</service></services>'
            '</assembly><assembly name="b" uuid="..."/><assembly name="c" uuid=""/>'
            '</assemblies></deployable>')
    dep = Deployable.from_xml(text)
    assert dep.uuid == "my-dep-0001"
    assert dep.assembly("a").uuid == "ABCDEF00-0000-4000-8000-0000000000AA"
    assert dep.assembly("a").service("s").uuid == "{svc-1}"
    assert _is_uuid(dep.assembly("b").uuid) and _is_uuid(dep.assembly("c").uuid)
    assert Deployable.from_xml(dep.to_xml()) == dep
    bare = Deployable.from_xml(text, assign_uuids=False)
    assert bare.uuid == "my-dep-0001"
    assert bare.assembly("b").uuid is None and bare.assembly("c").uuid is None


def test_given_uuids_are_kept_and_round_trip_is_equal():
    first = Deployable.from_xml(WEBSHOP)
    again = Deployable.from_xml(first.to_xml())
    assert again == first
    assert again.to_xml() == first.to_xml()


def test_webshop_example_matches_the_demo():
    dep = Deployable.from_xml(WEBSHOP)
    assert [a.name for a in dep.assemblies] == ["db", "app", "web"]
    assert dep.assembly("db").service("store").agent == "ocf:heartbeat:Dummy"
    web = dep.assembly("web").service("httpd")
    assert web.klass == "process"
    assert "http.server 8080" in web.params["command"]
    assert web.probe == Probe("http", url="http://127.0.0.1:8080/", interval=1, timeout=0.5)
    assert any(d.first == "db:store" and d.then == "web:httpd" for d in dep.dependencies)
    assert all(a.heartbeat() == (1, 3) for a in dep.assemblies)


def _one(service_xml: str, extra: str = "") -> str:
    return (f'<deployable name="d">\n<assemblies>\n<assembly name="a"><services>\n'
            f"{service_xml}\n</services></assembly>\n</assemblies>{extra}\n</deployable>")


PROCESS = ('<service name="s" class="process"><parameters>'
           '<parameter name="command" value="sleep 100"/></parameters></service>')


@pytest.mark.parametrize("service, message", [
    ('<service name="s" class="ocf" type="Dummy"/>', 'class "ocf" needs both "provider"'),
    ('<service name="s" class="ocf" provider="heartbeat"/>', 'class "ocf" needs both'),
    ('<service name="s" class="systemd"/>', 'class "systemd" needs "type" (the unit)'),
    ('<service name="s" class="lsb"/>', 'class "lsb" needs "type" (the init script)'),
    ('<service name="s" class="lsb" provider="x" type="cron"/>', 'takes no "provider"'),
    ('<service name="s" class="process"/>', 'needs a non-empty "command" parameter'),
    ('<service name="s" class="process"><parameters><parameter name="command" value=" "/>'
     "</parameters></service>", 'needs a non-empty "command"'),
    ('<service name="s" class="lsb" type="x"><parameters><parameter name="a" value="1"/>'
     '<parameter name="a" value="2"/></parameters></service>', 'parameter "a" is given twice'),
    ('<service name="s" class="lsb" type="x" escalation_failures="3"/>',
     "escalation_failures needs escalation_period"),
    ('<service name="s" class="lsb" type="x" escalation_period="3"/>',
     "escalation_period needs escalation_failures"),
    ('<service name="s" class="lsb" type="x"><probe kind="tcp" host="h"/></service>',
     'a tcp probe needs the attribute "port"'),
    ('<service name="s" class="lsb" type="x"><probe kind="exec" command="true" port="1"/>'
     "</service>", 'an exec probe does not take the attribute "port"'),
    ('<service name="s" class="lsb" type="x"><probe kind="exec" command="true" interval="1" '
     'timeout="2"/></service>', "timeout is longer than its interval"),
])
def test_service_semantics(service, message):
    with pytest.raises(DeployableError, match=re.escape(message)) as caught:
        Deployable.from_xml(_one(service))
    assert caught.value.line == 4


def test_dependency_semantics_point_at_the_dependency_line():
    text = _one(PROCESS, '\n<constraints>\n<service_dependency id="x" first="a:s" then="a:s"/>'
                         "\n</constraints>")
    with pytest.raises(DeployableError, match="cannot depend on itself") as caught:
        Deployable.from_xml(text)
    assert caught.value.line == 8


def test_three_service_cycle_is_named():
    services = "".join(PROCESS.replace('name="s"', f'name="{n}"') for n in "xyz")
    deps = ('<constraints><service_dependency id="d1" first="a:x" then="a:y"/>'
            '<service_dependency id="d2" first="a:y" then="a:z"/>'
            '<service_dependency id="d3" first="a:z" then="a:x"/></constraints>')
    with pytest.raises(DeployableError, match="a:x -> a:y -> a:z -> a:x"):
        Deployable.from_xml(_one(services, deps))


def test_duplicate_dependency_id_refused():
    services = PROCESS + PROCESS.replace('name="s"', 'name="t"')
    deps = ('<constraints><service_dependency id="d" first="a:s" then="a:t"/>'
            '<service_dependency id="d" first="a:s" then="a:t"/></constraints>')
    with pytest.raises(DeployableError, match='dependency id "d" is used twice'):
        Deployable.from_xml(_one(services, deps))


def test_deployable_escalation_needs_both_attributes():
    text = _one(PROCESS).replace('name="d"', 'name="d" escalation_failures="2"')
    with pytest.raises(DeployableError, match='deployable "d": escalation_failures needs'):
        Deployable.from_xml(text)


def test_schema_errors_are_xml_errors_not_semantic_ones():
    with pytest.raises(XMLError) as caught:
        Deployable.from_xml('<deployable name="d"/>')
    assert not isinstance(caught.value, DeployableError)


def test_duplicate_real_uuids_refused():
    u = str(uuid.uuid4())
    text = (f'<deployable name="d"><assemblies><assembly name="a" uuid="{u}"/>'
            f'<assembly name="b" uuid="{u}"/></assemblies></deployable>')
    with pytest.raises(DeployableError, match="uuid of another component"):
        Deployable.from_xml(text)


def test_service_template_from_xml():
    service = Service.from_xml((ROOT / "xml" / "templates" / "mysqld.xml").read_text())
    assert service.agent == "ocf:heartbeat:mysql"
    assert service.params["datadir"] == "/var/lib/mysql"
    with pytest.raises(DeployableError, match='class "process" needs'):
        Service.from_xml('<service name="x" class="process"/>')


def test_diff_reports_added_removed_and_changed():
    old = Deployable.from_xml(WEBSHOP)
    new_text = (WEBSHOP
                .replace("python3 -m http.server 8080 --bind 127.0.0.1",
                         "python3 -m http.server 8090 --bind 127.0.0.1")
                .replace('<service name="journal"', '<service name="wal"')
                .replace('heartbeat_interval="1" heartbeat_misses="3"\n'
                         '              escalation_failures="3" escalation_period="300">\n'
                         "      <services>\n"
                         '        <service name="api"',
                         'heartbeat_interval="2" heartbeat_misses="3"\n'
                         '              escalation_failures="3" escalation_period="300">\n'
                         "      <services>\n"
                         '        <service name="api"'))
    new = Deployable.from_xml(new_text)
    changes = diff(old, new)
    assert changes
    assert changes.services_changed == (("web", "httpd"),)
    assert changes.services_added == (("db", "wal"),)
    assert changes.services_removed == (("db", "journal"),)
    assert changes.assemblies_changed == ("app",)
    assert not changes.assemblies_added and not changes.assemblies_removed
    assert not changes.deployable_changed


def test_diff_ignores_uuids_and_detects_assemblies_and_dependencies():
    a = Deployable.from_xml(DESIGN)
    b = Deployable.from_xml(DESIGN)
    assert a.uuid != b.uuid
    assert not diff(a, b)
    smaller = DESIGN.replace(DESIGN[DESIGN.index('    <assembly name="web"'):
                                    DESIGN.index("  </assemblies>")], "")
    smaller = smaller.replace(smaller[smaller.index("  <constraints>"):
                                      smaller.index("</deployable>")], "")
    changes = diff(a, Deployable.from_xml(smaller))
    assert changes.assemblies_removed == ("web",)
    assert changes.services_removed == (("web", "httpd"),)
    assert changes.dependencies_removed == a.dependencies


def test_adopt_uuids_keeps_identity_across_reload():
    old = Deployable.from_xml(DESIGN)
    new = Deployable.from_xml(DESIGN, assign_uuids=False).adopt_uuids(old).with_uuids()
    assert new == old
