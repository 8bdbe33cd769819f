"""Pure pieces of the agent: digest, request parsing, result documents, the scheduler."""

from __future__ import annotations

import hashlib
import threading

import pytest
from lxml import etree

from guest_agent.heartbeat import state_digest
from guest_agent.monitors import ProbeState, Scheduler, Workers, grid_due, next_due
from guest_agent.requests import op_result, parse_op, report
from guest_agent.resources.base import OpResult, ProbeSpec
from pcloud import schemas
from pcloud.bus import MethodError


def test_digest_is_md5_of_sorted_lines():
    assert state_digest({"b": "failed", "a": "running"}) == hashlib.md5(
        b"a=running\nb=failed").hexdigest()
    assert state_digest({}) == hashlib.md5(b"").hexdigest()


def test_parse_op_with_parameters_and_probe():
    root = etree.fromstring(
        '<resource_op operation="monitor" interval="500" timeout="3000">'
        '<resource name="web" class="process"><parameters>'
        '<parameter name="command" value="sleep 1"/></parameters>'
        '<probe kind="tcp" port="8080" interval="0.2" failures="2"/></resource></resource_op>')
    spec, interval, timeout = parse_op(root, "monitor")
    assert (spec.name, spec.cls, spec.params, interval, timeout) == (
        "web", "process", {"command": "sleep 1"}, 500, 3.0)
    assert spec.probes == (ProbeSpec("tcp", 0.2, 0.2, "127.0.0.1:8080", failures=2),)


@pytest.mark.parametrize("xml", [
    '<resource_op operation="start"><resource name="x" class="nope"/></resource_op>',
    '<resource_op operation="stop"><resource name="x" class="process"/></resource_op>',
    '<resource_op operation="start"><resource name="x" class="process">'
    '<probe kind="http"/></resource></resource_op>',
    '<resource_op operation="start"/>',
])
def test_parse_op_refuses(xml):
    with pytest.raises(MethodError) as err:
        parse_op(etree.fromstring(xml), "start")
    assert err.value.code == "invalid_request"


def test_result_documents_are_schema_valid():
    from types import SimpleNamespace

    from pcloud.wire import results

    result = OpResult(7, "done", "process exited with signal 9", "out\x00put", 3)
    root = op_result("web", "monitor", 1000, result)
    schemas.validate(root, "op_result")
    assert results.OpResult.from_xml(root).output == "out\ufffdput"
    config = SimpleNamespace(deployable="d", assembly="a", uuid="u-1")
    root = report(config, "web", 1000, OpResult(7, reason="gone\x01", output="tail"))
    schemas.validate(root, "report")
    read = results.Report.from_xml(root)
    assert (read.uuid, read.rc, read.interval, read.reason) == ("u-1", 7, 1000, "gone\ufffd")


def test_probe_failures_count_after_first_success():
    state = ProbeState(ProbeSpec("exec", 0.1, 0.1, "true", failures=2, grace=3600))
    state.record("refused")
    state.record("refused")
    assert not state.failing
    state.record(None)
    state.record("refused")
    assert not state.failing
    state.record("refused")
    assert state.failing


def test_scheduler_runs_jobs_until_cancelled():
    scheduler = Scheduler(workers=2)
    runs = threading.Semaphore(0)
    job = scheduler.add("tick", 0.01, runs.release, first_delay=0)
    for _ in range(3):
        assert runs.acquire(timeout=5)
    job.cancel()
    scheduler.stop()


def test_whole_second_jobs_move_earlier_onto_the_shared_grid():
    # origin 100.0: a 5 s monitor added at 100.3 would first run at 105.3; it runs at 105.0
    assert grid_due(105.3, 5.0, 100.0, 100.3) == 105.0
    # never into the past: a heartbeat due now at 100.3 runs now
    assert grid_due(100.3, 1.0, 100.0, 100.3) == 100.3
    # sub-second and fractional intervals keep their own times
    assert grid_due(100.8, 0.5, 100.0, 100.3) == 100.8
    assert grid_due(102.8, 2.5, 100.0, 100.3) == 102.8


def test_a_late_job_skips_the_runs_it_missed_and_stays_on_its_schedule():
    assert next_due(10.0, 1.0, 10.2) == 11.0
    assert next_due(10.0, 1.0, 13.5) == 14.0      # 11, 12, 13 missed: no burst
    assert next_due(10.0, 2.0, 12.0) == 14.0


def test_workers_end_when_idle_and_start_again_on_demand():
    workers = Workers(limit=2, idle=0.05)
    ran = threading.Semaphore(0)
    assert workers.submit(ran.release)
    assert ran.acquire(timeout=5)
    deadline = threading.Event()
    for _ in range(200):                # the worker ends after 0.05 s without work
        if workers._threads == 0:
            break
        deadline.wait(0.05)
    assert workers._threads == 0
    assert workers.submit(ran.release)
    assert ran.acquire(timeout=5)
    workers.stop()
    assert not workers.submit(ran.release)


def test_inline_jobs_and_one_shots_run_on_the_scheduler_thread():
    scheduler = Scheduler(workers=1)
    threads: list[str] = []
    done = threading.Semaphore(0)

    def record() -> None:
        threads.append(threading.current_thread().name)
        done.release()

    job = scheduler.add("quick", 0.01, record, first_delay=0, inline=True)
    scheduler.once("later", 0.01, record)
    for _ in range(3):
        assert done.acquire(timeout=5)
    job.cancel()
    scheduler.stop()
    assert set(threads) == {"scheduler"}


def _op_variants() -> list[tuple[str, str]]:
    """``<resource_op>`` documents around the schema's edges: (what changed, document)."""
    probe = '<probe kind="http" url="http://127.0.0.1:8080/" interval="0.5" failures="2"/>'
    params = '<parameters><parameter name="command" value="sleep 1"/></parameters>'

    def doc(op: str = 'operation="monitor" interval="1000" timeout="20000"',
            rsc: str = 'name="web" class="process"', inner: str = params + probe) -> str:
        return f"<resource_op {op}><resource {rsc}>{inner}</resource></resource_op>"

    out = [("as the DPE sends it", doc()), ("no children", doc(inner="")),
           ("probe first", doc(inner=probe + params)), ("comment", doc(inner="<!-- c -->"))]
    for op in ('operation="start"', 'operation="cancel" interval="0"', 'operation="restart"',
               'operation="start" interval="-1"', 'operation="start" timeout="0"',
               'operation="start" timeout="1.5"', 'interval="5"',
               'operation="start" extra="1"', 'operation="start" interval="007"'):
        out.append((op, doc(op=op)))
    for rsc in ('name="a" class="ocf" provider="heartbeat" type="Dummy"', 'class="ocf"',
                'name="web" class="kvm"', 'name="-web" class="lsb"', f'name="{"a" * 64}" '
                'class="lsb"', f'name="{"a" * 65}" class="lsb"', 'name="w.b" class="lsb"',
                'name="w" class="systemd" type="getty@tty1.service"',
                'name="w" class="systemd" type="a b"', 'name="w" class="lsb" provider="x/y"',
                'name="w" class="lsb" xmlns:x="urn:x" x:y="1"'):
        out.append((rsc, doc(rsc=rsc)))
    for inner in (params + params, probe + probe, "<parameters/>", "text",
                  '<parameters><parameter name="a"/></parameters>',
                  '<parameters><parameter name="a b" value=""/></parameters>',
                  f'<parameters><parameter name="a" value="{"v" * 4096}"/></parameters>',
                  f'<parameters><parameter name="a" value="{"v" * 4097}"/></parameters>',
                  '<parameters><parameter name="a" value="">x</parameter></parameters>',
                  '<parameters><param name="a" value=""/></parameters>', "<probe/>",
                  '<probe kind="tcp" port="65535" host="::1"/>', '<probe kind="tcp" port="0"/>',
                  '<probe kind="tcp" port="65536"/>', '<probe kind="udp" port="53"/>',
                  '<probe kind="http" url="ftp://x/"/>', '<probe kind="http" url="http://a b"/>',
                  '<probe kind="http" url="http://a/" expect_status="99"/>',
                  '<probe kind="http" url="http://a/" expect_status="599"/>',
                  '<probe kind="exec" command="true" interval="0" failures="0"/>',
                  '<probe kind="exec" command="true" timeout="0.25"/>',
                  '<probe kind="exec" command="true" timeout=".5"/>',
                  '<probe kind="exec" command="true" grace="5"/>', "<other/>",
                  '<probe kind="tcp" port="80"><x/></probe>'):
        out.append((inner[:40], doc(inner=inner)))
    out.append(("another root", "<resource_ops/>"))
    out.append(("namespaced", '<resource_op xmlns="urn:x" operation="start">'
                              '<resource name="a" class="lsb"/></resource_op>'))
    return out


@pytest.mark.parametrize("what,xml", _op_variants())
def test_the_agents_check_of_resource_op_agrees_with_the_schema(what, xml):
    from pcloud.wire.check import WireError
    from pcloud.wire.resource_op import ResourceOp
    from pcloud.xmlsafe import XMLError

    root = etree.fromstring(xml)
    try:
        schemas.validate(root, "resource_op")
        schema_ok = True
    except XMLError:
        schema_ok = False
    try:
        ResourceOp.from_xml(root)
        check_ok = True
    except WireError as exc:
        assert str(exc)
        check_ok = False
    assert check_ok == schema_ok, f"{what}: check {check_ok}, schema {schema_ok}"
    if not check_ok:
        with pytest.raises(MethodError) as err:
            parse_op(root, "monitor")
        assert err.value.code == "invalid_request"


def test_the_dpes_resource_op_passes_the_agents_check():
    from pcloud.deployable import Probe
    from pcloud.wire.resource_op import ResourceDef, ResourceOp

    for probe in (None, Probe("http", url="http://127.0.0.1:80/", interval=0.25, timeout=1.0,
                              failures=3, expect_status=204)):
        attrs = None if probe is None else dict(probe.to_element().attrib)
        op = ResourceOp("monitor", ResourceDef("web", "ocf", "heartbeat", "apache",
                                               {"configfile": "/etc/apache2/apache2.conf"},
                                               attrs), 2000, 20000)
        root = etree.fromstring(etree.tostring(op.to_xml()))
        schemas.validate(root, "resource_op")
        assert ResourceOp.from_xml(root) == op
        spec, interval, timeout = parse_op(root, "monitor")
        assert (spec.name, spec.provider, spec.type, interval, timeout) == (
            "web", "heartbeat", "apache", 2000, 20.0)
        assert len(spec.probes) == (probe is not None)
