"""The wire's message dataclasses: what they write passes the schema and reads back equal,
and their strict readers accept nothing the schema refuses (the heartbeat's in
test_heartbeat_doc.py, the resource op's in test_agent_units.py)."""

from __future__ import annotations

import pytest
from lxml import etree

from pcloud import schemas, xmlsafe
from pcloud.wire.agent_info import AgentInfo
from pcloud.wire.check import WireError
from pcloud.wire.resource_op import ResourceDef, ResourceOp
from pcloud.wire.results import OpResult, Report

TIME = "2026-12-07T10:00:00.123Z"
PROBE = {"kind": "http", "url": "http://127.0.0.1:80/", "interval": "0.25", "failures": "3"}

MESSAGES = [
    ("op_result", OpResult("web", "monitor", 7, TIME, interval=1000, duration_ms=3,
                           reason="process exited with signal 9", output="tail")),
    ("op_result", OpResult("web", "cancel", 0, TIME, "error")),
    ("op_result", OpResult("web", "start", -1, TIME, "timeout", reason="r" * 5000)),
    ("report", Report("d", "a", "web", 7, TIME, interval=1000, uuid="u-1", reason="gone",
                      output="out")),
    ("report", Report("d", "a", "web", 0, TIME, "start")),
    ("agent", AgentInfo("d", "a", 42, TIME, "0.1.0", uuid="u-1")),
    ("agent", AgentInfo("d", "a", 1, TIME, "")),
    ("resource_op", ResourceOp("monitor", ResourceDef("web", "ocf", "heartbeat", "apache",
                                                      {"b": "2", "a": "1"}, PROBE), 2000, 20000)),
    ("resource_op", ResourceOp("start", ResourceDef("p", "process"))),
]


@pytest.mark.parametrize("schema,message", MESSAGES, ids=[f"{s}-{i}" for i, (s, _) in
                                                          enumerate(MESSAGES)])
def test_written_messages_pass_their_schema_and_read_back(schema, message):
    root = xmlsafe.parse(etree.tostring(message.to_xml()))
    schemas.validate(root, schema)
    back = type(message).from_xml(root)
    reason = getattr(message, "reason", None)
    if reason and len(reason) > 4096:
        assert back.reason == reason[:4096]
    else:
        assert back == message


def _variants(tag: str, good: dict[str, str], changes: list[dict[str, str | None]],
              inner: list[str]) -> list[str]:
    out = []
    for change in changes:
        attrs = {k: v for k, v in {**good, **change}.items() if v is not None}
        out.append(etree.tostring(etree.Element(tag, attrs), encoding="unicode"))
    head = etree.tostring(etree.Element(tag, good), encoding="unicode").removesuffix("/>")
    out += [f"{head}>{text}</{tag}>" for text in inner]
    return out


RESULT = {"resource": "web", "operation": "monitor", "interval": "1000", "rc": "7",
          "status": "done", "time": TIME, "duration_ms": "3", "reason": "gone"}
REPORT = {"deployable": "d", "assembly": "a", "resource": "web", "operation": "monitor",
          "interval": "1000", "rc": "7", "time": TIME, "reason": "gone", "uuid": "u-1"}
INFO = {"deployable": "d", "assembly": "a", "uuid": "u-1", "pid": "42", "started": TIME,
        "version": "0.1"}
COMMON = [{}, {"rc": "-3"}, {"rc": "+3"}, {"rc": "3.0"}, {"rc": None}, {"interval": None},
          {"interval": "-1"}, {"interval": "007"}, {"operation": "restart"},
          {"resource": "-web"}, {"resource": "w" * 65}, {"time": "yesterday"},
          {"time": "2026-12-07T10:00:00+01:00"}, {"reason": "r" * 4096},
          {"reason": "r" * 4097}, {"reason": ""}, {"extra": "1"}, {"time": None}]
OUTPUTS = ["<output>tail</output>", "<output/>", "<output>a<!-- c -->b</output>",
           "<output>x</output><output>y</output>", "<output><b/></output>",
           '<output x="1">t</output>', "text", "<other/>", "<!-- c --><output>t</output>",
           "<output>t</output>tail"]
DOCUMENTS = (
    [("op_result", d) for d in _variants("op_result", RESULT, COMMON + [
        {"status": "lost"}, {"status": None}, {"duration_ms": "1.5"}, {"duration_ms": None}],
        OUTPUTS)]
    + [("report", d) for d in _variants("report", REPORT, COMMON + [
        {"uuid": "a b"}, {"uuid": ""}, {"uuid": None}, {"deployable": None},
        {"assembly": "-"}], OUTPUTS)]
    + [("agent", d) for d in _variants("agent", INFO, [
        {}, {"uuid": None}, {"pid": "-1"}, {"pid": None}, {"version": "v" * 4097},
        {"started": "now"}, {"assembly": "a b"}, {"extra": "1"}], ["<x/>", "text"])]
    + [("agent", "<agent/>"), ("agent", "<op_result/>"),
       ("op_result", '<op_result xmlns="urn:x" resource="w" operation="stop" rc="0" '
                     f'status="done" time="{TIME}"/>')])
READERS = {"op_result": OpResult, "report": Report, "agent": AgentInfo}


@pytest.mark.parametrize("schema,xml", DOCUMENTS, ids=[f"{s}-{i}" for i, (s, _) in
                                                      enumerate(DOCUMENTS)])
def test_readers_accept_nothing_the_schema_refuses(schema, xml):
    root = etree.fromstring(xml)
    try:
        READERS[schema].from_xml(root)
    except WireError as exc:
        assert str(exc)
        return
    schemas.validate(root, schema)


def test_readers_accept_the_good_documents():
    for schema, good in (("op_result", RESULT), ("report", REPORT), ("agent", INFO)):
        inner = ["<output>t</output>", "<output/>", " <!-- c --> "] if schema != "agent" else []
        for xml in _variants(schema, good, [{}, {"reason": None, "uuid": None}], inner):
            READERS[schema].from_xml(etree.fromstring(xml))
