"""Differential scenarios: both transition computers must give the expected actions/edges.

Scenarios are data (tests/scenarios/<name>/{cib.xml,expected.txt,description.txt}), found by
glob. ``UPDATE_SCENARIOS=1`` rewrites expected.txt from crm_simulate for review instead.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

import pytest
from lxml import etree

from dpe_agent.engines import get_engine
from dpe_agent.engines.pacemaker import crm_simulate_path

SCENARIOS = sorted(p.parent for p in (Path(__file__).parent / "scenarios").glob("*/cib.xml"))
NO_CRM = "crm_simulate not installed (apt-get install pacemaker-cli-utils)"


def load(directory: Path) -> tuple[etree._Element, datetime]:
    parser = etree.XMLParser(resolve_entities=False, no_network=True, remove_blank_text=True)
    cib = etree.parse(str(directory / "cib.xml"), parser).getroot()
    return cib, datetime.fromtimestamp(int(cib.get("execution-date")), UTC)


def summary(engine: str, directory: Path) -> str:
    cib, now = load(directory)
    return "\n".join(get_engine(engine).compute(cib, now).summary_lines()) + "\n"


def test_enough_scenarios_with_descriptions():
    assert len(SCENARIOS) >= 30
    for directory in SCENARIOS:
        assert (directory / "expected.txt").is_file(), directory.name
        assert (directory / "description.txt").read_text().strip(), directory.name


@pytest.mark.parametrize("directory", SCENARIOS, ids=lambda d: d.name)
def test_native_matches_expected(directory):
    assert summary("native", directory) == (directory / "expected.txt").read_text()


@pytest.mark.skipif(crm_simulate_path() is None, reason=NO_CRM)
@pytest.mark.parametrize("directory", SCENARIOS, ids=lambda d: d.name)
def test_pacemaker_matches_expected(directory):
    got = summary("pacemaker", directory)
    if os.environ.get("UPDATE_SCENARIOS"):
        (directory / "expected.txt").write_text(got)
    assert got == (directory / "expected.txt").read_text()
