"""Transition graph model: parsing Pacemaker's format, readiness, normalized comparison."""
# ruff: noqa: E501  (the fixture is a verbatim crm_simulate graph)

import pytest

from dpe_agent.graph import Action, Synapse, TransitionGraph

PACEMAKER_GRAPH = """<transition_graph cluster-delay="60s" transition_id="0" recheck-by="1795252101">
  <synapse id="0">
    <action_set>
      <rsc_op id="3" operation="start" operation_key="a.svc_start_0" on_node="a" on_node_uuid="u1">
        <primitive id="a.svc" class="ocf" provider="heartbeat" type="Dummy"/>
        <attributes CRM_meta_on_node="a" CRM_meta_timeout="20000" port="80"/>
      </rsc_op>
    </action_set>
    <inputs>
      <trigger><rsc_op id="1" operation="monitor" operation_key="a.svc_monitor_0" on_node="a"/></trigger>
      <trigger><crm_event id="2" operation="stonith" operation_key="stonith-b-reboot" on_node="b"/></trigger>
    </inputs>
  </synapse>
  <synapse id="1">
    <action_set>
      <rsc_op id="1" operation="monitor" operation_key="a.svc_monitor_0" on_node="a" on_node_uuid="u1">
        <primitive id="a.svc" class="ocf" provider="heartbeat" type="Dummy"/>
        <attributes CRM_meta_op_target_rc="7" CRM_meta_timeout="20000" port="80"/>
      </rsc_op>
    </action_set>
    <inputs/>
  </synapse>
  <synapse id="2">
    <action_set>
      <crm_event id="2" operation="stonith" operation_key="stonith-b-reboot" on_node="b" on_node_uuid="u2">
        <attributes CRM_meta_stonith_action="reboot"/>
        <downed><node id="u2"/></downed>
      </crm_event>
    </action_set>
    <inputs/>
  </synapse>
  <synapse id="3">
    <action_set>
      <pseudo_event id="4" operation="stop" operation_key="b.t_stop_0">
        <attributes CRM_meta_timeout="20000"/>
      </pseudo_event>
    </action_set>
    <inputs><trigger><crm_event id="2" operation="stonith" operation_key="stonith-b-reboot" on_node="b"/></trigger></inputs>
  </synapse>
</transition_graph>"""


@pytest.fixture
def graph():
    return TransitionGraph.from_xml(PACEMAKER_GRAPH)


def test_parse_actions(graph):
    start = graph.by_id[3]
    assert (start.kind, start.operation, start.resource, start.node) == (
        "rsc_op", "start", "a.svc", "a")
    assert start.parameters == {"port": "80"}
    assert start.timeout_ms == 20000 and start.interval_ms == 0 and start.target_rc == 0
    probe = graph.by_id[1]
    assert probe.is_probe and probe.target_rc == 7
    fence = graph.by_id[2]
    assert fence.kind == "crm_event" and fence.downed == ["u2"]
    assert graph.by_id[4].resource == "b.t"
    assert graph.recheck_by == 1795252101


def test_ready_follows_triggers(graph):
    assert sorted(a.id for a in graph.ready(set())) == [1, 2]
    assert sorted(a.id for a in graph.ready({1})) == [2]
    assert sorted(a.id for a in graph.ready({1, 2})) == [3, 4]
    assert graph.ready({1, 2, 3, 4}) == []
    assert graph.dependencies[3] == {1, 2}


def test_round_trip_keeps_normalized_form(graph):
    again = TransitionGraph.from_xml(graph.to_xml())
    assert again.normalized() == graph.normalized()
    assert again.recheck_by == graph.recheck_by
    assert again.by_id[3].attributes == graph.by_id[3].attributes


def test_normalized_ignores_ids(graph):
    actions, edges = graph.normalized()
    assert "a.svc_start_0 a" in actions and "pseudo b.t_stop_0" in actions
    assert ("stonith-b-reboot b", "a.svc_start_0 a") in edges
    renumbered = TransitionGraph([
        Synapse(0, Action(7, "rsc_op", "monitor", "a.svc_monitor_0", "a.svc", "a")),
    ])
    assert renumbered.normalized()[0] == {"a.svc_monitor_0 a"}


def test_summary_lines_sorted(graph):
    lines = graph.summary_lines()
    assert lines[-1] == "recheck-by: 1795252101"
    body = lines[:-1]
    assert body == sorted(body, key=lambda line: (not line.startswith("action"), line))


def test_rejects_other_documents():
    with pytest.raises(ValueError):
        TransitionGraph.from_xml("<cib/>")


def test_cancel_is_named_apart_from_the_monitor():
    cancel = Action(1, "rsc_op", "cancel", "a.svc_monitor_5000", "a.svc", "a",
                    attributes={"CRM_meta_interval": "5000"})
    assert cancel.name == "cancel a.svc_monitor_5000 a"
    assert cancel.interval_ms == 5000

