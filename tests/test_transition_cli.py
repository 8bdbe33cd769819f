"""pcloud-transition: graph XML on stdout, one-line errors with exit 1."""

from pathlib import Path

import pytest

from dpe_agent.engines.pacemaker import crm_simulate_path
from dpe_agent.graph import TransitionGraph
from dpe_agent.transition_cli import main

SCENARIO = Path(__file__).parent / "scenarios" / "monitor-failed-first-restarts-mandatory-then"


def run(capsys, *args):
    rc = main(list(args))
    out, err = capsys.readouterr()
    return rc, out, err


def test_native_prints_graph(capsys):
    rc, out, err = run(capsys, str(SCENARIO / "cib.xml"))
    assert rc == 0 and err == ""
    graph = TransitionGraph.from_xml(out)
    expected = (SCENARIO / "expected.txt").read_text().splitlines()
    assert graph.summary_lines() == expected


@pytest.mark.skipif(crm_simulate_path() is None,
                    reason="crm_simulate not installed (apt-get install pacemaker-cli-utils)")
def test_pacemaker_engine_with_now(capsys):
    rc, out, _ = run(capsys, "--engine", "pacemaker", "--now", "2026-11-21T09:00:00Z",
                     str(SCENARIO / "cib.xml"))
    assert rc == 0
    assert TransitionGraph.from_xml(out).summary_lines() == (
        SCENARIO / "expected.txt").read_text().splitlines()


@pytest.mark.parametrize("content, words", [
    ("<cib", "pcloud-transition:"),
    ('<!DOCTYPE x [<!ENTITY a "b">]><cib/>', "not allowed"),
    ("<deployable/>", "expected a <cib>"),
])
def test_bad_input_one_line_exit_1(capsys, tmp_path, content, words):
    path = tmp_path / "cib.xml"
    path.write_text(content)
    rc, out, err = run(capsys, str(path))
    assert rc == 1 and out == ""
    assert words in err and err.count("\n") == 1


def test_missing_file_and_bad_time_are_plain_sentences(capsys, tmp_path):
    missing = tmp_path / "nope.xml"
    rc, _, err = run(capsys, str(missing))
    assert rc == 1 and err == f"pcloud-transition: cannot read {missing}: no such file\n"
    rc, _, err = run(capsys, str(tmp_path))
    assert rc == 1 and err == f"pcloud-transition: cannot read {tmp_path}: it is a directory\n"
    rc, _, err = run(capsys, "--now", "garbage", str(SCENARIO / "cib.xml"))
    assert rc == 1
    assert err.startswith("pcloud-transition: --now: 'garbage' is not an ISO 8601 time")
    assert err.count("\n") == 1 and "Errno" not in err and "isoformat" not in err
