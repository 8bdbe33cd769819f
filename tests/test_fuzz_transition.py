"""The differential fuzzer: generator, shrinker, and a fixed-seed batch against crm_simulate.

The batch is the CI guard that native and Pacemaker's scheduler agree beyond the hand-written
scenarios; a long batch is marked slow. A failure prints the shrunk CIB's folder, ready to be
reviewed and copied into tests/scenarios/.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from lxml import etree

from dpe_agent.engines import Unsupported
from dpe_agent.engines.native import NativeEngine
from dpe_agent.engines.pacemaker import crm_simulate_path
from tests.fuzz_transition import case, fuzz, generate, shrink

NO_CRM = "crm_simulate not installed (apt-get install pacemaker-cli-utils)"
SEED = 20261121
SCENARIOS = Path(__file__).parent / "scenarios"


def test_cases_are_reproducible():
    first, now = case(SEED, 7)
    again, later = case(SEED, 7)
    assert etree.tostring(first) == etree.tostring(again) and now == later
    assert etree.tostring(first) != etree.tostring(case(SEED, 8)[0])


def test_generator_covers_the_subset():
    """Over a few hundred cases every drawn construct shows up at least once."""
    import random
    seen = set()
    for index in range(300):
        cib, _ = generate(random.Random(index))
        nodes = cib.findall("configuration/nodes/node")
        states = {s.get("uname"): s for s in cib.iterfind("status/node_state")}
        seen.add(f"assemblies>{10}" if len(nodes) > 10 else "small")
        for node in nodes:
            state = states.get(node.get("uname"))
            if state is None:
                seen.add("never-seen")
            elif state.get("expected") == "down":
                seen.add("down-with-history" if state.find("lrm") is not None else "fenced")
            elif state.get("in_ccm") == "true" and state.get("crmd") == "offline":
                seen.add("unclean")
            elif state.get("crmd") == "offline":
                seen.add("lost")
        if cib.find("configuration/resources/primitive[@class='stonith']") is None:
            seen.add("no-device")
        for kind in cib.xpath("configuration/constraints/rsc_order/@kind"):
            seen.add(kind)
        for op in cib.iterfind("status//lrm_rsc_op"):
            seen.add(f"{op.get('operation')}:{op.get('rc-code')}")
        if cib.xpath("status//lrm_resource[contains(@id, '.gone')]"):
            seen.add("orphan")
    expected = {"small", "assemblies>10", "never-seen", "down-with-history", "fenced", "unclean",
                "lost", "no-device", "Mandatory", "Optional", "orphan", "monitor:0", "monitor:7",
                "monitor:193", "start:1", "start:193", "stop:0", "stop:1"}
    assert expected <= seen, expected - seen


def test_shrink_keeps_what_the_predicate_needs():
    """Shrinking removes everything the property does not depend on."""
    cib, now = case(SEED, 3)
    nodes = cib.findall("configuration/nodes/node")
    assert nodes
    keep = nodes[0].get("uname")

    def still(candidate: etree._Element, _now) -> bool:
        return bool(candidate.xpath("configuration/nodes/node[@uname=$u]", u=keep))

    small = shrink(cib, now, still)
    assert [n.get("uname") for n in small.findall("configuration/nodes/node")] == [keep]
    assert not small.findall("configuration/constraints/rsc_order")
    assert not small.xpath("status//lrm_rsc_op")


def test_native_refuses_what_it_does_not_implement():
    """A promoted result is named in the refusal; by default crm_simulate is used instead."""
    folder = SCENARIOS / "promoted-result-refused-by-native"
    cib = etree.parse(str(folder / "cib.xml")).getroot()
    from datetime import UTC, datetime
    now = datetime.fromtimestamp(int(cib.get("execution-date")), UTC)
    with pytest.raises(Unsupported, match="rc-code=9 op-status=0"):
        NativeEngine(fallback=False).compute(cib, now)
    if crm_simulate_path() is not None:
        graph = NativeEngine().compute(cib, now)
        expected = (folder / "expected.txt").read_text()
        assert "\n".join(graph.summary_lines()) + "\n" == expected


def _batch(seed: int, cases: int, budget_s: float, tmp_path: Path) -> None:
    messages: list[str] = []
    deadline = time.monotonic() + budget_s
    done = 0
    while done < cases and time.monotonic() < deadline:
        step = min(25, cases - done)
        report = fuzz(seed, step, start=done, out=tmp_path, log=messages.append)
        done += report.cases
        assert report.disagreements == 0, "\n".join(messages)
    assert done >= min(cases, 50), f"only {done} cases within {budget_s:g}s"


@pytest.mark.skipif(crm_simulate_path() is None, reason=NO_CRM)
def test_fixed_seed_fuzz_batch_agrees(tmp_path):
    """A few hundred random CIBs: identical actions, edges and recheck-by (time-bounded)."""
    _batch(SEED, 300, 120.0, tmp_path)


@pytest.mark.slow
@pytest.mark.skipif(crm_simulate_path() is None, reason=NO_CRM)
def test_long_fuzz_batch_agrees(tmp_path):
    _batch(SEED + 1, 3000, 1800.0, tmp_path)
