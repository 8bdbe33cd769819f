"""pcloudsh one-shot catalogue commands, run as a user would (subprocess), no broker needed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent


def sh(state: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PCLOUD_STATE_DIR=str(state),
               PCLOUD_BROKER_URL="amqp://nobody:nothing@127.0.0.1:1")
    return subprocess.run([str(BIN / "pcloudsh"), *args], capture_output=True, text=True,
                          env=env, timeout=60)


def ok(state: Path, *args: str) -> str:
    result = sh(state, *args)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_the_seed_session_builds_a_valid_deployable(tmp_path: Path) -> None:
    ok(tmp_path, "assembly_create", "assy1", "F14", "x86_64")
    ok(tmp_path, "assembly_clone", "assy1", "assy2")
    ok(tmp_path, "assembly_clone", "assy1", "assy3")
    for assembly in ("assy1", "assy2", "assy3"):
        ok(tmp_path, "assembly_resource_add", "httpd", "httpd", assembly)
    ok(tmp_path, "escalation_assembly_set", "assy1", "3", "600")
    ok(tmp_path, "escalation_resource_set", "assy2", "httpd", "5", "3600")
    ok(tmp_path, "deployable_create", "dep1")
    for assembly in ("assy1", "assy2", "assy3"):
        ok(tmp_path, "deployable_assembly_add", "dep1", assembly)
    ok(tmp_path, "deployable_dependency_add", "dep1", "assy1:httpd", "assy2:httpd")
    document = tmp_path / "dep1.xml"
    document.write_text(ok(tmp_path, "deployable_show", "dep1"))
    assert ok(tmp_path, "validate", str(document)) == "valid\n"
    text = document.read_text()
    assert 'escalation_failures="3" escalation_period="600"' in text
    assert 'escalation_failures="5" escalation_period="3600"' in text
    assert text.count('type="apache"') == 3
    listed = json.loads(ok(tmp_path, "--json", "deployable_assembly_list", "dep1"))
    assert [a["name"] for a in listed] == ["assy1", "assy2", "assy3"]
    assemblies = json.loads(ok(tmp_path, "--json", "assembly_list"))
    assert len({a["uuid"] for a in assemblies}) == 3


def test_resource_list_and_remove(tmp_path: Path) -> None:
    ok(tmp_path, "assembly_create", "a", "debian-12")
    ok(tmp_path, "assembly_resource_add", "db", "mysqld", "a")
    ok(tmp_path, "assembly_resource_add", "web", "nginx", "a")
    rows = json.loads(ok(tmp_path, "--json", "assembly_resource_list", "a"))
    assert {r["name"]: r["template"] for r in rows} == {"db": "mysqld", "web": "nginx"}
    ok(tmp_path, "assembly_resource_remove", "db", "a")
    assert "db" not in ok(tmp_path, "assembly_resource_list", "a")


@pytest.mark.parametrize("args, words", [
    (("assembly_resource_add", "x", "nosuchtemplate", "a"), "no resource template"),
    (("assembly_resource_add", "x", "httpd", "nosuch"), "no assembly named"),
    (("assembly_create", "a", "F14"), "already exists"),
    (("assembly_create", "bad/name", "F14"), "not valid"),
    (("escalation_assembly_set", "a", "three", "60"), "positive integer"),
    (("deployable_assembly_add", "nodep", "a"), "no deployable named"),
    (("deployable_start", "empty"), "has no assemblies"),
    (("deployable_create",), "usage: deployable_create"),
    (("no_such_command",), "unknown command"),
])
def test_errors_are_one_line_and_exit_1(tmp_path: Path, args: tuple[str, ...],
                                        words: str) -> None:
    ok(tmp_path, "assembly_create", "a", "F14")
    ok(tmp_path, "deployable_create", "empty")
    result = sh(tmp_path, *args)
    assert result.returncode == 1
    assert words in result.stderr
    assert result.stderr.count("\n") == 1 and result.stdout == ""


def test_bad_input_is_refused_here_in_one_line(tmp_path: Path) -> None:
    """Mistakes are named before anything is sent: the file's line, the bad name, the URL."""
    bad = tmp_path / "bad.xml"
    bad.write_text('<deployable name="d" infrastructure="process">\n  <assemblies>\n'
                   '    <assembly name="a"><services/></assembly>\n  <nonsense/>\n'
                   '</assemblies></deployable>\n')
    broken = tmp_path / "broken.xml"
    broken.write_text("<deployable>\n<oops\n")
    for args, words in [
        (("deployable_start", str(bad)), f"{bad}:"),
        (("deployable_start", str(broken)), f"{broken}:"),
        (("deployable_reload", str(bad)), f"{bad}:"),
        (("deployable_start", str(tmp_path / "none.xml")), "none.xml: no such file"),
        (("deployable_status", "bad name!"),
         "invalid deployable name 'bad name!': use letters, digits, _ and -"),
        (("deployable_stop", "bad name!"), "invalid deployable name"),
        (("events", "--type", "bogus"), "unknown event type 'bogus'; the types are "),
        (("events", "--count", "0"), "--count must be 1 or more"),
    ]:
        result = sh(tmp_path, *args)
        assert result.returncode == 1, args
        assert words in result.stderr, (args, result.stderr)
        assert result.stderr.count("\n") == 1 and "attribute" not in result.stderr, args
    result = sh(tmp_path, "--broker-url", "http://x", "deployable_list")
    assert result.returncode == 2
    assert result.stderr == ("pcloudsh: --broker-url: the broker URL must be amqp://… or "
                             "amqps://…, not http://…\n")


def test_jeos_names_templates_and_reload_hints(tmp_path: Path) -> None:
    for name, args in (("a1", ("debian12",)), ("a2", ("bookworm", "x86_64")),
                       ("a3", ("debian-12", "x86_64")), ("a4", ("F14", "x86_64"))):
        ok(tmp_path, "assembly_create", name, *args)
    jeos = {a["name"]: a["jeos"] for a in json.loads(ok(tmp_path, "--json", "assembly_list"))}
    assert jeos == {"a1": "debian-12-x86_64", "a2": "debian-12-x86_64",
                    "a3": "debian-12-x86_64", "a4": "F14-x86_64"}
    templates = {t["name"]: t["needs"] for t in
                 json.loads(ok(tmp_path, "--json", "template_list"))}
    assert templates["dummy"] == "-" and templates["httpd"] == "apache2 curl"
    assert "Only templates that need nothing run out of the box" in ok(tmp_path,
                                                                       "template_list")
    assert "deployable_reload" not in ok(tmp_path, "assembly_resource_add", "r", "dummy", "a1")
    ok(tmp_path, "deployable_create", "d")
    ok(tmp_path, "deployable_assembly_add", "d", "a1")
    for args in (("assembly_resource_remove", "r", "a1"),
                 ("escalation_assembly_set", "a1", "3", "60")):
        assert "changes only with 'deployable_reload d'" in ok(tmp_path, *args)


def test_assembly_in_use_cannot_be_deleted(tmp_path: Path) -> None:
    ok(tmp_path, "assembly_create", "a", "F14")
    ok(tmp_path, "deployable_create", "d")
    ok(tmp_path, "deployable_assembly_add", "d", "a")
    assert "remove it from them first" in sh(tmp_path, "assembly_delete", "a").stderr
    ok(tmp_path, "deployable_assembly_remove", "d", "a")
    ok(tmp_path, "assembly_delete", "a")
    assert json.loads(ok(tmp_path, "--json", "assembly_list")) == []


def test_cpe_commands_fail_in_one_line_without_a_broker(tmp_path: Path) -> None:
    result = sh(tmp_path, "deployable_status", "dep1")
    assert result.returncode == 1
    assert "cannot reach the broker" in result.stderr
    assert result.stderr.count("\n") == 1


def test_help_lists_every_seed_command(tmp_path: Path) -> None:
    text = ok(tmp_path, "help")
    for name in ("jeos_create", "jeos_list", "jeos_delete", "assembly_create", "assembly_clone",
                 "assembly_delete", "assembly_list", "assembly_resource_add",
                 "assembly_resource_remove", "assembly_resource_list",
                 "escalation_assembly_set", "escalation_resource_set", "deployable_create",
                 "deployable_delete", "deployable_list", "deployable_start", "deployable_stop",
                 "deployable_reload", "deployable_status", "deployable_assembly_add",
                 "deployable_assembly_remove", "deployable_assembly_list", "events",
                 "validate"):
        assert f"  {name}" in text, name
    assert "usage: assembly_resource_add <resource> <template> <assembly>" in \
        ok(tmp_path, "help", "assembly_resource_add")


def test_adding_a_template_whose_program_is_missing_warns(tmp_path: Path) -> None:
    ok(tmp_path, "assembly_create", "web", "F14", "x86_64")
    said = ok(tmp_path, "assembly_resource_add", "front", "httpd", "web")
    if Path("/usr/sbin/apache2").exists():
        assert "warning" not in said
    else:
        assert "warning: resource web/front uses template 'httpd'" in said
        assert "apache2" in said and "blocked" in said
    assert "warning" not in ok(tmp_path, "assembly_resource_add", "d", "dummy", "web")
