"""Events: XML round trip, time format, topic keys and the shell's one-line rendering."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from pcloud import schemas
from pcloud.events import MAX_TEXT, Event, EventType, format_time, parse_time
from pcloud.xmlsafe import XMLError

DESIGN_EVENT = (Path(__file__).resolve().parent / "data" / "design-event.xml").read_text()


def test_design_event_reads_into_fields():
    event = Event.from_xml(DESIGN_EVENT)
    assert event.seq == 42
    assert event.time == datetime(2026, 11, 21, 10, 0, 0, 123000, tzinfo=UTC)
    assert event.type is EventType.RESOURCE_STATE_CHANGE
    assert (event.deployable, event.assembly, event.resource) == ("dep1", "web", "httpd")
    assert event.state == "failed"
    assert event.reason == "process exited with signal 9"
    assert event.extra == {}


def test_round_trip_with_extra_timing_attributes():
    event = Event(7, datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC),
                  EventType.RESOURCE_STATE_CHANGE, "dep1", "web", "httpd", "running",
                  "recovered", previous="restarting", duration_ms=127.5,
                  detected_at=datetime(2026, 1, 2, 3, 4, 5, 551000, tzinfo=UTC),
                  incident="abc-1")
    text = event.to_xml()
    assert 'time="2026-01-02T03:04:05.678Z"' in text
    assert 'detected_at="2026-01-02T03:04:05.551Z"' in text
    assert 'duration_ms="127.5"' in text
    assert schemas.load(text)[0] == "event"
    assert Event.from_xml(text) == event


def test_time_is_utc_with_milliseconds_and_z():
    plus_two = timezone(timedelta(hours=2))
    assert format_time(datetime(2026, 11, 21, 12, 0, 0, 5000, tzinfo=plus_two)) == \
        "2026-11-21T10:00:00.005Z"
    assert format_time(datetime(2026, 11, 21, 10, 0, 0)) == "2026-11-21T10:00:00.000Z"
    assert parse_time("2026-11-21T12:00:00.5+02:00") == \
        datetime(2026, 11, 21, 10, 0, 0, 500000, tzinfo=UTC)


def test_naive_time_counts_as_utc_and_none_means_now():
    before = datetime.now(UTC) - timedelta(seconds=1)
    assert Event(1, None, "config_error", "d").time >= before
    assert Event(1, datetime(2026, 1, 1), "config_error", "d").time.tzinfo is not None


@pytest.mark.parametrize("assembly, resource, key", [
    (None, None, "pcloud.event.dep1.-.-"),
    ("web", None, "pcloud.event.dep1.web.-"),
    ("web", "httpd", "pcloud.event.dep1.web.httpd"),
])
def test_topic_keys(assembly, resource, key):
    event = Event(1, None, EventType.ESCALATION, "dep1", assembly, resource)
    assert event.topic_key() == key


def test_unnumbered_event_for_event_raise_and_with_seq():
    raised = Event.from_xml('<event type="config_error" deployable="d" reason="bad"/>')
    assert raised.seq is None
    assert 'seq="' not in raised.to_xml()
    numbered = raised.with_seq(5)
    assert numbered.seq == 5 and numbered.reason == "bad"
    assert schemas.load(numbered.to_xml())[0] == "event"


def test_invalid_event_refused():
    with pytest.raises(XMLError, match='attribute "type" has invalid value'):
        Event.from_xml('<event seq="1" time="2026-11-21T10:00:00.000Z" type="boom" '
                       'deployable="d"/>')
    with pytest.raises(ValueError):
        Event(1, None, "boom", "d")


def test_describe_matches_the_shell_display():
    event = Event.from_xml(DESIGN_EVENT)
    assert event.describe() == \
        "10:00:00.123 dep1/web/httpd  resource failed: process exited with signal 9"


@pytest.mark.parametrize("event, text", [
    (Event(1, "2026-11-21T10:00:00.000Z", "deployable_state_change", "dep1", state="running"),
     "10:00:00.000 dep1  deployable running"),
    (Event(1, "2026-11-21T10:00:00.000Z", "assembly_state_change", "dep1", "db",
           state="failed", reason="missed 3 heartbeats"),
     "10:00:00.000 dep1/db  assembly failed: missed 3 heartbeats"),
    (Event(1, "2026-11-21T10:00:00.000Z", "escalation", "dep1", "web", "httpd",
           reason="3 failures in 60 s", escalated_to="assembly"),
     "10:00:00.000 dep1/web/httpd  escalation: restarting the assembly: 3 failures in 60 s"),
    (Event(1, "2026-11-21T10:00:00.250Z", "resource_state_change", "dep1", "web", "httpd",
           state="running", duration_ms=127),
     "10:00:00.250 dep1/web/httpd  resource running (recovered in 127 ms)"),
    (Event(1, "2026-11-21T10:00:00.000Z", "config_error", "dep1", reason="bad document"),
     "10:00:00.000 dep1  configuration error: bad document"),
])
def test_describe_variants(event, text):
    assert event.describe() == text


def test_events_are_hashable_and_comparable():
    a = Event(1, "2026-11-21T10:00:00.000Z", "fencing", "d", "a", incident="x")
    b = Event(1, "2026-11-21T10:00:00.000Z", "fencing", "d", "a", incident="x")
    assert a == b and hash(a) == hash(b)


def test_over_long_free_text_is_truncated_with_an_ellipsis_and_stays_valid():
    long = "x" * (MAX_TEXT * 2)
    event = Event(7, None, EventType.CONFIG_ERROR, "d1", reason="prefix: " + long,
                  detail=long, incident="abc-1", previous="running")
    assert len(event.reason) == MAX_TEXT and event.reason.endswith("x…")
    assert event.reason.startswith("prefix: xxx")
    assert len(event.extra["detail"]) == MAX_TEXT and event.extra["detail"].endswith("…")
    assert (event.extra["incident"], event.extra["previous"]) == ("abc-1", "running")
    root = event.to_element()
    schemas.validate(root, "event")
    assert Event.from_xml(root) == event
    exact = "y" * MAX_TEXT
    assert Event(1, None, EventType.CONFIG_ERROR, "d1", reason=exact).reason == exact
