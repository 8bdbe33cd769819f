"""Graph execution bookkeeping: ordering, parallelism, pseudo events, abort, holds."""

from dpe_agent.executor import (
    OP_ERROR,
    OP_TIMEOUT,
    ActionResult,
    ActionRunner,
    GraphRun,
    agent_class,
)
from dpe_agent.graph import Action, Synapse, TransitionGraph
from pcloud import schemas, xmlsafe
from pcloud.wire.resource_op import ResourceDef, ResourceOp


def op(aid, operation, rsc="web.httpd", node="web", interval=0, kind="rsc_op", target=None):
    attrs = {"CRM_meta_interval": str(interval), "CRM_meta_timeout": "20000", "port": "80"}
    if target is not None:
        attrs["CRM_meta_op_target_rc"] = str(target)
    return Action(aid, kind, operation, f"{rsc}_{operation}_{interval}", rsc, node,
                  rsc_class="ocf", provider="pcloud", rsc_type="process", attributes=attrs)


def graph(*edges_and_actions):
    actions, edges = edges_and_actions
    return TransitionGraph(Synapse(i, a, edges.get(a.id, [])) for i, a in enumerate(actions))


def chain():
    """stop(1) -> pseudo(2) -> start(3) -> monitor(4); probe(5) independent."""
    actions = [op(1, "stop"), op(2, "all_stopped", kind="pseudo_event"), op(3, "start"),
               op(4, "monitor", interval=5000), op(5, "monitor", rsc="db.mysqld", node="db",
                                                   target=7)]
    return graph(actions, {2: [1], 3: [2], 4: [3]})


def test_ready_actions_launch_in_parallel_and_dependents_wait():
    launched = []
    run = GraphRun(chain(), 1, launched.append)
    run.start()
    assert sorted(a.id for a in launched) == [1, 5]
    run.complete(launched[0], ok=True)           # stop done: pseudo completes, start launches
    assert [a.id for a in launched] == [1, 5, 3]
    assert 2 in run.done


def test_graph_completes_when_all_actions_done():
    launched = []
    run = GraphRun(chain(), 1, launched.append)
    run.start()
    while not run.finished:
        run.complete(next(a for a in launched if a.id in run.running), ok=True)
    assert run.completed


def test_failed_action_aborts_new_launches_but_running_ones_finish():
    launched = []
    run = GraphRun(chain(), 1, launched.append)
    run.start()
    stop, probe = launched
    run.complete(stop, ok=False)
    assert run.aborted and not run.finished      # the probe still runs
    run.complete(probe, ok=True)
    assert run.finished and not run.completed
    assert [a.id for a in launched] == [1, 5]


def test_lost_assembly_abandons_its_running_actions_so_the_graph_finishes():
    launched = []
    run = GraphRun(chain(), 1, launched.append)
    run.start()                                  # stop on web and probe on db run
    abandoned = run.abandon_node("web")
    assert [a.id for a in abandoned] == [1]
    assert run.aborted and not run.finished      # the probe on db still runs
    run.complete(next(a for a in launched if a.id == 5), ok=True)
    assert run.finished and [a.id for a in launched] == [1, 5]


def test_abandoning_an_assembly_with_nothing_running_changes_nothing():
    run = GraphRun(chain(), 1, lambda action: None)
    run.start()
    assert run.abandon_node("app") == [] and not run.aborted


def test_external_abort_stops_launches():
    launched = []
    run = GraphRun(chain(), 1, launched.append)
    run.start()
    run.abort("new report")
    run.complete(launched[0], ok=True)
    assert [a.id for a in launched] == [1, 5]


def test_held_action_is_not_launched_and_graph_finishes():
    launched = []
    run = GraphRun(chain(), 1, launched.append, hold=lambda a: a.operation == "start")
    run.start()
    for action in list(launched):
        run.complete(action, ok=True)
    assert run.held == {3} and run.finished and not run.completed


def test_probe_finding_resource_running_succeeds_but_is_unexpected():
    probe = op(5, "monitor", target=7)
    assert ActionResult(0).succeeded(probe) and not ActionResult(0).as_expected(probe)
    assert ActionResult(7).as_expected(probe)
    assert not ActionResult(0, OP_TIMEOUT).succeeded(op(1, "start"))


class AnsweringBus:
    """Records the agent calls; answers each with ``answer``."""

    def __init__(self, answer: str) -> None:
        self.answer = answer
        self.calls: list[tuple[str, str, str]] = []

    def call(self, queue, method, body, timeout, senders=None):
        self.calls.append((queue, method, body))
        return xmlsafe.parse(self.answer)


def run_op(answer: str, action: Action):
    bus = AnsweringBus(answer)
    runner = ActionRunner(bus, "dep", None, lambda node: None, lambda uuid: None)
    return runner.run(action), bus.calls


def test_a_resource_operation_names_the_whole_resource():
    _, [(queue, method, body)] = run_op(
        '<op_result resource="httpd" operation="start" interval="0" rc="0" status="done" '
        'time="2026-12-07T10:00:00.000Z"/>', op(1, "start"))
    assert (queue, method) == ("pcloud.agent.dep.web", "resource_start")
    root = xmlsafe.parse(body)
    schemas.validate(root, "resource_op")
    assert ResourceOp.from_xml(root) == ResourceOp(
        "start", ResourceDef("httpd", "process", params={"port": "80"}), 0, 20000)


def test_the_agents_answer_is_read_strictly():
    result, _ = run_op('<op_result resource="httpd" operation="start" rc="7" status="timeout" '
                       'time="2026-12-07T10:00:00Z" reason="slow"><output>o</output></op_result>',
                       op(1, "start"))
    assert (result.rc, result.op_status, result.reason, result.output) == (
        7, OP_TIMEOUT, "slow", "o")
    for answer in ('<op_result rc="0"/>', '<op_result resource="httpd" operation="start" '
                   'rc="zero" status="done" time="2026-12-07T10:00:00Z"/>'):
        result, _ = run_op(answer, op(1, "start"))
        assert (result.rc, result.op_status) == (1, OP_ERROR)
        assert "invalid op_result" in result.reason
    result, _ = run_op('<response/>', op(1, "start"))
    assert result.reason == "agent answered without op_result"


def test_agent_class_maps_pcloud_process_back():
    assert agent_class("ocf", "pcloud", "process") == ("process", None, None)
    assert agent_class("ocf", "heartbeat", "Dummy") == ("ocf", "heartbeat", "Dummy")
