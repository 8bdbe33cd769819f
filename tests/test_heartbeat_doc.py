"""The heartbeat's cheap check: never accepts what schemas/heartbeat.rng refuses."""

import pytest
from lxml import etree

from dpe_agent import heartbeat_doc
from pcloud import schemas, xmlsafe
from pcloud.addresses import AddressError, format_addresses, parse

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
        heartbeat_doc.read(root)
    except heartbeat_doc.HeartbeatError:
        return
    assert schema_ok(root)


def test_a_good_heartbeat_is_read():
    beat = heartbeat_doc.read(document(addresses="fd00::5 10.0.2.15 10.0.2.15"))
    assert (beat.assembly, beat.uuid, beat.seq, beat.interval, beat.pid) == (
        "web", "0b6c-11", 42, 0.5, 7)
    assert beat.addresses == ("10.0.2.15", "fd00::5")
    assert heartbeat_doc.read(document(addresses=None)).addresses is None
    assert heartbeat_doc.read(document(addresses="")).addresses == ()


def test_children_text_and_other_elements_are_refused():
    for text in ('<heartbeat deployable="d" seq="1" started="2026-12-07T10:00:00Z" '
                 'interval="1" time="2026-12-07T10:00:00Z"><x/></heartbeat>',
                 '<heartbeat deployable="d" seq="1" started="2026-12-07T10:00:00Z" '
                 'interval="1" time="2026-12-07T10:00:00Z">hi</heartbeat>',
                 '<report deployable="d" seq="1" started="2026-12-07T10:00:00Z" '
                 'interval="1" time="2026-12-07T10:00:00Z"/>'):
        with pytest.raises(heartbeat_doc.HeartbeatError):
            heartbeat_doc.read(xmlsafe.parse(text))


def test_addresses_are_canonical_sorted_and_bounded():
    assert parse("fd00:0:0::5 10.0.2.15") == ("10.0.2.15", "fd00::5")
    assert format_addresses(["::1", "127.0.0.1", "::1"]) == "127.0.0.1 ::1"
    assert parse("") == ()
    with pytest.raises(AddressError, match="limit of 32"):
        parse(" ".join(f"10.0.0.{i}" for i in range(33)))
    with pytest.raises(AddressError, match="not an IPv4 or IPv6"):
        parse("10.0.0.1 example.org")
