"""The assembly's addresses in heartbeats: reading the kernel's tables, and which beat
carries them (guest_agent.addresses, the contract in docs/protocol.md)."""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import sys

import pytest

from guest_agent.addresses import (
    AddressTracker,
    addresses_from_netlink,
    ipv4_from_fib_trie,
    ipv6_from_if_inet6,
    reachable,
)

FIB_TRIE = """Main:
  +-- 0.0.0.0/0 3 0 5
     |-- 0.0.0.0
        /0 universe UNICAST
     +-- 10.0.2.0/24 2 0 2
        |-- 10.0.2.0
           /24 link UNICAST
        |-- 10.0.2.15
           /32 host LOCAL
        |-- 10.0.2.255
           /32 link BROADCAST
     +-- 127.0.0.0/8 2 0 2
        |-- 127.0.0.1
           /32 host LOCAL
Local:
  +-- 0.0.0.0/0 3 0 5
     |-- 10.0.2.15
        /32 host LOCAL
     |-- 169.254.7.7
        /32 host LOCAL
"""

IF_INET6 = """00000000000000000000000000000001 01 80 10 80       lo
fe80000000000000505400fffe123456 02 40 20 80     eth0
fd000000000000000000000000000005 02 40 00 80     eth0
fd000000000000000000000000000009 02 40 00 08     eth0
"""


def test_ipv4_local_addresses_are_read_from_fib_trie():
    assert ipv4_from_fib_trie(FIB_TRIE) == {"10.0.2.15", "127.0.0.1", "169.254.7.7"}


def test_ipv6_addresses_are_read_from_if_inet6_without_failed_duplicates():
    found = ipv6_from_if_inet6(IF_INET6)
    assert "fd00:0000:0000:0000:0000:0000:0000:0005" in found
    assert "fe80:0000:0000:0000:5054:00ff:fe12:3456" in found
    assert not any(a.endswith("0009") for a in found)           # DAD failed


def test_loopback_and_link_local_are_left_out_and_the_rest_sorted():
    found = ipv4_from_fib_trie(FIB_TRIE) | ipv6_from_if_inet6(IF_INET6)
    assert reachable(found) == ["10.0.2.15", "fd00::5"]


def test_at_most_32_addresses():
    many = {f"10.1.0.{i}" for i in range(1, 60)}
    kept = reachable(many)
    assert len(kept) == 32 and kept[0] == "10.1.0.1"


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_first_beat_and_the_first_after_a_change_carry_the_addresses():
    current = ["10.0.2.15"]
    clock = Clock()
    reads: list[float] = []

    def read() -> list[str]:
        reads.append(clock.now)
        return list(current)

    tracker = AddressTracker(read, clock, every=5.0)
    assert tracker.for_beat() == "10.0.2.15"          # first beat after start
    clock.now = 1.0
    assert tracker.for_beat() is None                 # unchanged: absent
    current.append("fd00::5")
    clock.now = 2.0
    assert tracker.for_beat() is None                 # not read again before 5 s
    clock.now = 5.0
    assert tracker.for_beat() == "10.0.2.15 fd00::5"  # the change, once
    clock.now = 6.0
    assert tracker.for_beat() is None
    assert reads == [0.0, 5.0]


def test_a_reconnect_repeats_the_addresses_on_the_next_beats():
    clock = Clock()
    tracker = AddressTracker(lambda: ["10.0.2.15"], clock)
    assert tracker.for_beat() == "10.0.2.15"
    assert tracker.for_beat() is None
    tracker.reconnected(beats=2)
    assert [tracker.for_beat() for _ in range(3)] == ["10.0.2.15", "10.0.2.15", None]


def test_no_addresses_is_an_empty_value_not_an_absent_one():
    tracker = AddressTracker(lambda: [], Clock())
    assert tracker.for_beat() == ""


def _newaddr(family: int, raw: bytes, flags: int = 0, local: bool = True) -> bytes:
    attr_type = 2 if local else 1                    # IFA_LOCAL or IFA_ADDRESS
    attr = struct.pack("=HH", 4 + len(raw), attr_type) + raw
    flags_attr = struct.pack("=HHI", 8, 8, flags)    # IFA_FLAGS
    body = struct.pack("=BBBBI", family, 24, 0, 0, 2) + attr + flags_attr
    return struct.pack("=LHHLL", 16 + len(body), 20, 2, 1, 0) + body


def test_a_netlink_dump_is_read_and_failed_duplicates_left_out():
    done = struct.pack("=LHHLL", 20, 3, 2, 1, 0) + b"\0\0\0\0"
    data = (_newaddr(socket.AF_INET, socket.inet_aton("10.0.2.15"))
            + _newaddr(socket.AF_INET6, socket.inet_pton(socket.AF_INET6, "fd00::5"),
                       local=False)
            + _newaddr(socket.AF_INET6, socket.inet_pton(socket.AF_INET6, "fd00::9"),
                       flags=0x08))
    assert addresses_from_netlink(data) == ({"10.0.2.15", "fd00::5"}, False)
    assert addresses_from_netlink(done) == (set(), True)
    with pytest.raises(OSError):
        addresses_from_netlink(struct.pack("=LHHLL", 36, 2, 0, 1, 0) + bytes(20))
    with pytest.raises(OSError):
        addresses_from_netlink(data[:-4])


@pytest.mark.skipif(os.geteuid() != 0 or subprocess.run(
    ["unshare", "--net", "true"], capture_output=True).returncode != 0,
    reason="needs root and network namespaces")
def test_an_address_added_in_a_network_namespace_is_read_by_netlink_and_from_proc():
    script = ("import subprocess\n"
              "from guest_agent.addresses import (netlink_addresses, proc_addresses, "
              "reachable, read_addresses)\n"
              "before = read_addresses()\n"
              "for args in (['link', 'set', 'lo', 'up'], "
              "['addr', 'add', '10.77.0.5/32', 'dev', 'lo'], "
              "['addr', 'add', 'fd00:77::5/128', 'dev', 'lo']):\n"
              "    subprocess.run(['ip', *args], check=True)\n"
              "print(before, read_addresses(), reachable(netlink_addresses()) == "
              "reachable(proc_addresses()))\n")
    out = subprocess.run(["unshare", "--net", sys.executable, "-c", script], check=True,
                         capture_output=True, text=True).stdout
    assert out.strip() == "[] ['10.77.0.5', 'fd00:77::5'] True"
