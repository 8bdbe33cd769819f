"""CIB builder and observed state: configuration by XSLT, status from recorded results."""

import shutil
from datetime import UTC, datetime, timedelta

import pytest
from lxml import etree

from dpe_agent.cib import build_cib, rsc_id, split_rsc_id
from dpe_agent.digest import op_digest
from dpe_agent.engines import get_engine
from dpe_agent.observed import AssemblyStatus, ObservedState

NOW = datetime(2026, 11, 21, 9, 0, tzinfo=UTC)
DEPLOYABLE = """
<deployable name="dep1" uuid="d-1" infrastructure="process" escalation_failures="3"
            escalation_period="3600">
  <assemblies>
    <assembly name="db" uuid="u-db">
      <services>
        <service name="mysqld" class="ocf" provider="heartbeat" type="mysql" monitor_interval="5"
                 escalation_failures="5" escalation_period="3600">
          <parameters><parameter name="config" value="/etc/mysql/my.cnf"/></parameters>
        </service>
      </services>
    </assembly>
    <assembly name="web" uuid="u-web">
      <services>
        <service name="httpd" class="process" monitor_interval="2">
          <parameters><parameter name="command" value="python3 -m http.server 8080"/></parameters>
        </service>
      </services>
    </assembly>
  </assemblies>
  <constraints>
    <service_dependency id="db-first" first="db:mysqld" then="web:httpd"/>
  </constraints>
</deployable>"""


@pytest.fixture
def dep():
    return etree.fromstring(DEPLOYABLE)


def settle(dep, obs, engine="native"):
    """Execute graphs with every action succeeding, as the DPE executor would."""
    for _ in range(5):
        graph = get_engine(engine).compute(build_cib(dep, obs, now=NOW), NOW)
        if not len(graph):
            return
        done = set()
        while len(done) < len(graph):
            for action in graph.ready(done):
                obs.record(action, action.target_rc, now=NOW)
                done.add(action.id)
    raise AssertionError("did not settle")


def test_configuration_mapping(dep):
    cib = build_cib(dep, ObservedState(), escalation=True)
    assert cib.get("crm_feature_set") == "3.16.1"
    opts = {nv.get("name"): nv.get("value") for nv in cib.iterfind(".//crm_config//nvpair")}
    assert opts == {"symmetric-cluster": "false", "no-quorum-policy": "ignore",
                    "start-failure-is-fatal": "false", "stonith-enabled": "true"}
    assert [(n.get("id"), n.get("uname")) for n in cib.iterfind(".//nodes/node")] == [
        ("u-db", "db"), ("u-web", "web")]
    fence = cib.find(".//primitive[@id='fence_vm']")
    assert (fence.get("class"), fence.get("type")) == ("stonith", "fence_vm")
    assert cib.find(".//rsc_location[@id='loc_fence_vm']").get("resource-discovery") == "never"
    httpd = cib.find(".//primitive[@id='web.httpd']")
    assert (httpd.get("class"), httpd.get("provider"), httpd.get("type")) == (
        "ocf", "pcloud", "process")
    assert httpd.find(".//nvpair[@name='command']").get("value") == "python3 -m http.server 8080"
    assert httpd.find("operations/op").get("interval") == "2000ms"
    mysqld = cib.find(".//primitive[@id='db.mysqld']")
    meta = {nv.get("name"): nv.get("value") for nv in mysqld.iterfind("meta_attributes/nvpair")}
    assert meta == {"migration-threshold": "5", "failure-timeout": "3600s"}
    loc = cib.find(".//rsc_location[@rsc='db.mysqld']")
    assert (loc.get("node"), loc.get("score"), loc.get("resource-discovery")) == (
        "db", "INFINITY", "exclusive")
    order = cib.find(".//rsc_order")
    assert (order.get("first"), order.get("then"), order.get("kind")) == (
        "db.mysqld", "web.httpd", "Mandatory")


def test_the_dpe_cib_leaves_escalation_to_the_dpe(dep):
    cib = build_cib(dep, ObservedState())
    assert cib.find(".//primitive[@id='db.mysqld']/meta_attributes") is None


def test_stop_all_sets_target_role_stopped_on_every_primitive(dep):
    cib = build_cib(dep, ObservedState(), stop_all=True)
    roles = {p.get("id"): p.find("meta_attributes/nvpair[@name='target-role']").get("value")
             for p in cib.iterfind(".//primitive") if p.get("class") != "stonith"}
    assert roles == {"db.mysqld": "Stopped", "web.httpd": "Stopped"}


@pytest.mark.parametrize("engine", ["native", "pacemaker"])
def test_probe_finding_the_resource_running_is_not_a_failure(dep, engine):
    obs = ObservedState()
    obs.set_online("db")
    op = obs.record_op("db", "db.mysqld", "ocf", "mysql", "monitor", 0, 0, provider="heartbeat",
                       params={"config": "/etc/mysql/my.cnf"}, now=NOW)
    hist = obs.resource("db", "db.mysqld")
    assert op.expected_rc == 7 and not op.failed
    assert hist.fail_counts == {} and hist.last_failure is None
    state = build_cib(dep, obs, escalation=True).find("status/node_state[@uname='db']")
    assert state.find("transient_attributes") is None
    assert state.find(".//lrm_rsc_op").get("transition-key").split(":")[2] == "7"
    if engine == "pacemaker" and shutil.which("crm_simulate") is None:
        pytest.skip("crm_simulate not installed")
    dep.find(".//service[@name='mysqld']").set("escalation_failures", "1")
    graph = get_engine(engine).compute(build_cib(dep, obs, now=NOW, escalation=True), NOW)
    assert [a.name for a in graph.actions if a.node == "db"] == ["db.mysqld_monitor_5000 db"]


def test_a_probe_finding_an_unexpected_error_still_counts():
    obs = ObservedState()
    obs.set_online("db")
    op = obs.record_op("db", "db.mysqld", "ocf", "mysql", "monitor", 0, 1, now=NOW)
    assert op.failed
    assert obs.resource("db", "db.mysqld").fail_counts == {"monitor_0": 1}


def test_rsc_id_round_trip():
    assert split_rsc_id(rsc_id("web-1", "my_svc")) == ("web-1", "my_svc")


def test_ids_starting_with_a_digit_turn_schema_validation_off(dep):
    dep.find(".//assembly[@name='db']").set("name", "1db")
    dep.find(".//service_dependency").set("first", "1db:mysqld")
    assert build_cib(dep, ObservedState()).get("validate-with") == "none"
    cib = build_cib(dep, ObservedState(), now=NOW)
    assert cib.get("execution-date") == str(int(NOW.timestamp()))


def test_node_states(dep):
    obs = ObservedState()
    obs.set_online("db")
    obs.set_lost("web")
    states = {s.get("uname"): s for s in build_cib(dep, obs).iterfind("status/node_state")}
    assert states["db"].attrib["crmd"] == "online" and states["db"].get("in_ccm") == "true"
    assert states["web"].get("expected") == "member" and states["web"].get("join") == "down"
    obs.set_fenced("web")
    assert obs.status("web") is AssemblyStatus.FENCED
    web = build_cib(dep, obs).find("status/node_state[@uname='web']")
    assert web.get("expected") == "down" and len(web) == 0


def test_settling_records_history_with_correct_digests(dep):
    obs = ObservedState()
    obs.set_online("db")
    obs.set_online("web")
    settle(dep, obs)
    lrm = build_cib(dep, obs).find("status/node_state[@uname='db']//lrm_resource")
    ops = {op.get("id"): op for op in lrm}
    assert set(ops) == {"db.mysqld_last_0", "db.mysqld_monitor_5000"}
    last = ops["db.mysqld_last_0"]
    assert last.get("operation") == "start" and last.get("rc-code") == "0"
    assert last.get("op-digest") == op_digest({"config": "/etc/mysql/my.cnf"})
    mon = ops["db.mysqld_monitor_5000"]
    assert mon.get("op-digest") == op_digest({"config": "/etc/mysql/my.cnf"}, interval_ms=5000)
    assert mon.get("transition-key").split(":")[2] == "0"
    # Pacemaker agrees the settled state needs nothing.
    assert len(get_engine("pacemaker").compute(build_cib(dep, obs), NOW)) == 0


def test_failed_monitor_is_recorded_with_fail_count(dep):
    obs = ObservedState()
    obs.set_online("db")
    obs.set_online("web")
    settle(dep, obs)
    failed_at = NOW - timedelta(seconds=5)
    obs.report_monitor("db", "db.mysqld", 5000, 7, now=failed_at)
    state = build_cib(dep, obs).find("status/node_state[@uname='db']")
    attrs = {nv.get("name"): nv.get("value") for nv in state.iterfind(".//nvpair")}
    assert attrs == {"fail-count-db.mysqld#monitor_5000": "1",
                     "last-failure-db.mysqld#monitor_5000": str(int(failed_at.timestamp()))}
    failure = state.find(".//lrm_rsc_op[@id='db.mysqld_last_failure_0']")
    assert failure.get("rc-code") == "7" and failure.get("interval") == "5000"
    summary = get_engine("native").compute(build_cib(dep, obs), NOW).summary_lines()
    assert "edge: web.httpd_stop_0 web -> db.mysqld_stop_0 db" in summary
    settle(dep, obs)   # recovery: both restart, and then nothing more to do


def test_rejoined_assembly_has_empty_history(dep):
    obs = ObservedState()
    obs.set_online("db")
    obs.set_online("web")
    settle(dep, obs)
    obs.rejoined("db")
    assert obs.assemblies["db"].resources == {}
    names = get_engine("native").compute(build_cib(dep, obs), NOW).normalized()[0]
    assert "db.mysqld_monitor_0 db" in names


def test_stonith_and_clear_failcount_results(dep):
    obs = ObservedState()
    obs.set_online("db")
    obs.set_online("web")
    settle(dep, obs)
    obs.set_lost("web")
    graph = get_engine("native").compute(build_cib(dep, obs), NOW)
    fence = next(a for a in graph.actions if a.operation == "stonith")
    obs.record(fence, 0, now=NOW)
    assert obs.status("web") is AssemblyStatus.FENCED
    obs.report_monitor("db", "db.mysqld", 5000, 1, now=NOW)
    obs.clear_failcount("db", "db.mysqld")
    assert obs.resource("db", "db.mysqld").fail_counts == {}


def test_orphan_delete_forgets_history(dep):
    obs = ObservedState()
    obs.set_online("db")
    obs.record_op("db", "db.old", "ocf", "Dummy", "start", 0, 0, provider="heartbeat", now=NOW)
    graph = get_engine("native").compute(build_cib(dep, obs), NOW)
    for action in graph.actions:
        if action.resource == "db.old":
            obs.record(action, 0, now=NOW)
    assert obs.resource("db", "db.old") is None
