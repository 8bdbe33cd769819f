"""The assembly's addresses in heartbeats: reading the kernel's tables, and which beat
carries them (guest_agent.addresses, the contract in docs/protocol.md)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from guest_agent.addresses import (
    AddressTracker,
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


@pytest.mark.skipif(os.geteuid() != 0 or subprocess.run(
    ["unshare", "--net", "true"], capture_output=True).returncode != 0,
    reason="needs root and network namespaces")
def test_an_address_added_in_a_network_namespace_is_read_from_the_real_tables():
    script = ("import subprocess; from guest_agent.addresses import read_addresses; "
              "before = read_addresses(); "
              "subprocess.run(['ip', 'link', 'set', 'lo', 'up'], check=True); "
              "subprocess.run(['ip', 'addr', 'add', '10.77.0.5/32', 'dev', 'lo'], check=True); "
              "subprocess.run(['ip', 'addr', 'add', 'fd00:77::5/128', 'dev', 'lo'], check=True); "
              "print(before, read_addresses())")
    out = subprocess.run(["unshare", "--net", sys.executable, "-c", script], check=True,
                         capture_output=True, text=True).stdout
    assert out.strip() == "[] ['10.77.0.5', 'fd00:77::5']"

