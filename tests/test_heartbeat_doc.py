"""The heartbeat's cheap check (pcloud.wire.heartbeat): never accepts what
schemas/heartbeat.rng refuses; its writers write what it accepts."""

import pytest
from lxml import etree

from pcloud import schemas, xmlsafe
from pcloud.addresses import AddressError, format_addresses, parse
from pcloud.wire.heartbeat import Heartbeat, HeartbeatError, HeartbeatText

GOOD = {"deployable": "dep1", "assembly": "web", "uuid": "0b6c-11", "seq": "42",
        "started": "2026-12-07T10:00:00.000Z", "interval": "0.5",
        "digest": "0123456789abcdef0123456789abcdef", "time": "2026-12-07T10:00:21.5+01:00",
        "pid": "7", "addresses": "10.0.2.15 fd00::5"}

VARIANTS = [
    {}, {"addresses": ""}, {"addresses": None}, {"digest": None, "pid": None, "uuid": None},
    {"assembly": "-", "state": "running", "addresses": None}, {"interval": "+2.50"},
    {"seq": "0"}, {"interval": "0"}, {"interval": "-1"}, {"interval": "1e3"},
    {"seq": "-1"}, {"seq": "1.0"}, {"pid": "x"}, {"deployable": "-"}, {"deployable": "a b"},
    {"assembly": "-x"}, {"uuid": "a b"}, {"uuid": ""}, {"digest": "0123"},
    {"digest": "0123456789ABCDEF0123456789ABCDEF"}, {"started": "2026-12-07 10:00:00Z"},
    {"time": "yesterday"}, {"state": "asleep"}, {"addresses": "10.0.2.300"},
    {"addresses": "localhost"}, {"extra": "1"}, {"seq": None}, {"time": None},
    {"deployable": "x" * 65},
]


def document(**changes):
    attrs = {k: v for k, v in {**GOOD, **changes}.items() if v is not None}
    return etree.Element("heartbeat", attrs)


def schema_ok(root) -> bool:
    try:
        schemas.validate(root, "heartbeat")
        return True
    except xmlsafe.XMLError:
        return False


@pytest.mark.parametrize("changes", VARIANTS, ids=[str(v) for v in VARIANTS])
def test_cheap_check_accepts_nothing_the_schema_refuses(changes):
    root = document(**changes)
    try:
        Heartbeat.from_xml(root)
    except HeartbeatError:
        return
    assert schema_ok(root)


def test_a_good_heartbeat_is_read():
    beat = Heartbeat.from_xml(document(addresses="fd00::5 10.0.2.15 10.0.2.15"))
    assert (beat.assembly, beat.uuid, beat.seq, beat.interval, beat.pid) == (
        "web", "0b6c-11", 42, 0.5, 7)
    assert beat.addresses == ("10.0.2.15", "fd00::5")
    assert Heartbeat.from_xml(document(addresses=None)).addresses is None
    assert Heartbeat.from_xml(document(addresses="")).addresses == ()


def test_children_text_and_other_elements_are_refused():
    for text in ('<heartbeat deployable="d" seq="1" started="2026-12-07T10:00:00Z" '
                 'interval="1" time="2026-12-07T10:00:00Z"><x/></heartbeat>',
                 '<heartbeat deployable="d" seq="1" started="2026-12-07T10:00:00Z" '
                 'interval="1" time="2026-12-07T10:00:00Z">hi</heartbeat>',
                 '<report deployable="d" seq="1" started="2026-12-07T10:00:00Z" '
                 'interval="1" time="2026-12-07T10:00:00Z"/>'):
        with pytest.raises(HeartbeatError):
            Heartbeat.from_xml(xmlsafe.parse(text))


def test_what_the_dpe_and_the_agent_write_is_read_back():
    dpe = Heartbeat("dep1", 3, GOOD["started"], 1.0, GOOD["time"], assembly="-", pid=9,
                    state="running")
    root = dpe.to_xml()
    schemas.validate(root, "heartbeat")
    assert Heartbeat.from_xml(root) == dpe
    assert etree.tostring(root) == (
        b'<heartbeat deployable="dep1" assembly="-" seq="3" started="2026-12-07T10:00:00.000Z" '
        b'interval="1" time="2026-12-07T10:00:21.5+01:00" pid="9" state="running"/>')
    fixed = {"deployable": "dep1", "assembly": "web", "uuid": "0b6c-11",
             "started": GOOD["started"], "pid": "7"}
    text = HeartbeatText.fixed(fixed)
    for addresses in (None, "", "10.0.2.15 fd00::5"):
        root = xmlsafe.parse(text.beat(42, 0.5, GOOD["digest"], GOOD["time"], addresses))
        schemas.validate(root, "heartbeat")
        beat = Heartbeat.from_xml(root)
        assert (beat.seq, beat.interval, beat.uuid, beat.pid) == (42, 0.5, "0b6c-11", 7)
        assert beat.addresses == (None if addresses is None else parse(addresses))
        assert Heartbeat.from_xml(beat.to_xml()) == beat


def test_addresses_are_canonical_sorted_and_bounded():
    assert parse("fd00:0:0::5 10.0.2.15") == ("10.0.2.15", "fd00::5")
    assert format_addresses(["::1", "127.0.0.1", "::1"]) == "127.0.0.1 ::1"
    assert parse("") == ()
    with pytest.raises(AddressError, match="limit of 32"):
        parse(" ".join(f"10.0.0.{i}" for i in range(33)))
    with pytest.raises(AddressError, match="not an IPv4 or IPv6"):
        parse("10.0.0.1 example.org")
