"""``pcloudsh validate``: exit codes and messages, through the real entry point."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data"


def _run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pcloudsh.cli", "validate", *args],
                          input=stdin, capture_output=True, text=True, cwd=ROOT, timeout=60)


def test_valid_document_prints_valid_and_exits_0():
    result = _run(str(DATA / "design-deployable.xml"))
    assert (result.returncode, result.stdout, result.stderr) == (0, "valid\n", "")


def test_invalid_document_prints_file_line_message_and_exits_1():
    path = DATA / "bad" / "service-missing-name.xml"
    result = _run(str(path))
    assert result.returncode == 1
    assert result.stderr == ""
    assert result.stdout == f'{path}:16: element "service" missing required attribute "name"\n'


def test_semantic_error_is_reported_too():
    path = DATA / "bad" / "dependency-cycle.xml"
    result = _run(str(path))
    assert result.returncode == 1
    assert result.stdout.startswith(f"{path}:24: dependencies form a cycle")


def test_stdin_is_read_with_dash():
    result = _run("-", stdin='<events deployable="dep1" since_seq="0" limit="100"/>')
    assert (result.returncode, result.stdout) == (0, "valid\n")
    result = _run("-", stdin="<events limit='0'/>")
    assert result.returncode == 1
    assert result.stdout.startswith("<stdin>:1: ")


def test_missing_file_is_one_line_error():
    result = _run("/nonexistent/deployable.xml")
    assert result.returncode == 1
    assert result.stdout == ("/nonexistent/deployable.xml: cannot read file: "
                             "No such file or directory\n")


def test_malformed_xml_and_unknown_root():
    result = _run("-", stdin="<deployable name='x'>")
    assert result.returncode == 1 and result.stdout.startswith("<stdin>:1: ")
    result = _run("-", stdin="<cib/>")
    assert result.returncode == 1
    assert 'unknown document element "cib"' in result.stdout


def test_examples_and_templates_are_valid():
    files = sorted((ROOT / "xml").glob("*/*.xml"))
    assert len(files) >= 7
    for path in files:
        result = _run(str(path))
        assert result.returncode == 0, result.stderr



def test_help_describes_the_command():
    result = _run("--help")
    assert result.returncode == 0 and result.stdout.startswith("usage: pcloudsh validate FILE")
