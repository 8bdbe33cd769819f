"""The assembly's IP addresses, for the ``addresses`` attribute of heartbeats (issue 15).

Asked of the kernel for the agent's network namespace with one netlink ``RTM_GETADDR`` dump
(what ``ip addr`` does, without a subprocess; its cost does not grow with the routing table),
or, where netlink is refused, read from ``/proc/net/fib_trie`` (IPv4) and
``/proc/net/if_inet6`` (IPv6). Loopback and link-local addresses are left out (they say
nothing about how to reach the assembly). :class:`AddressTracker` decides, with the clock
injected, when to read again and which beat carries the set: the first beats after the agent
starts or reconnects, and the first beat after the set changed; every other beat leaves the
attribute out.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import struct
import threading
import time
from collections.abc import Callable

from pcloud.addresses import MAX_ADDRESSES, format_addresses

log = logging.getLogger(__name__)

CHECK_EVERY = 5.0          # seconds between two reads of the tables
FIB_TRIE = "/proc/net/fib_trie"
IF_INET6 = "/proc/net/if_inet6"
_IFA_F_DADFAILED = 0x08    # an IPv6 address another host already holds
# netlink (linux/netlink.h, linux/rtnetlink.h, linux/if_addr.h)
_NLMSG_ERROR, _NLMSG_DONE, _RTM_NEWADDR, _RTM_GETADDR = 2, 3, 20, 22
_NLM_F_REQUEST, _NLM_F_DUMP = 0x1, 0x300
_IFA_ADDRESS, _IFA_LOCAL, _IFA_FLAGS = 1, 2, 8
_HEADER = struct.Struct("=LHHLL")       # nlmsghdr: length, type, flags, seq, pid
_IFADDRMSG = struct.Struct("=BBBBI")    # family, prefix length, flags, scope, interface
_RTATTR = struct.Struct("=HH")          # length, type


def addresses_from_netlink(data: bytes) -> tuple[set[str], bool]:
    """The addresses in one buffer of an ``RTM_GETADDR`` dump, and whether it ended there
    (OSError on a netlink error message)."""
    found: set[str] = set()
    offset = 0
    while offset + _HEADER.size <= len(data):
        length, kind = _HEADER.unpack_from(data, offset)[:2]
        if length < _HEADER.size or offset + length > len(data):
            raise OSError("truncated netlink message")
        if kind == _NLMSG_DONE:
            return found, True
        if kind == _NLMSG_ERROR:
            raise OSError("netlink refused the address dump")
        if kind == _RTM_NEWADDR and length >= _HEADER.size + _IFADDRMSG.size:
            flags = _IFADDRMSG.unpack_from(data, offset + _HEADER.size)[2]
            attrs = {}
            at = offset + _HEADER.size + _IFADDRMSG.size
            while at + _RTATTR.size <= offset + length:
                size, kind = _RTATTR.unpack_from(data, at)
                if size < _RTATTR.size:
                    break
                attrs[kind] = data[at + _RTATTR.size:at + size]
                at += (size + 3) & ~3
            if len(attrs.get(_IFA_FLAGS, b"")) == 4:
                flags = struct.unpack("=I", attrs[_IFA_FLAGS])[0]
            raw = attrs.get(_IFA_LOCAL) or attrs.get(_IFA_ADDRESS)   # LOCAL: ours on a p-t-p
            if raw is not None and len(raw) in (4, 16) and not flags & _IFA_F_DADFAILED:
                found.add(str(ipaddress.ip_address(raw)))
        offset += (length + 3) & ~3
    return found, False


def netlink_addresses() -> set[str]:
    """Every address of this network namespace, by one ``RTM_GETADDR`` dump."""
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE) as sock:
        sock.settimeout(2.0)
        sock.bind((0, 0))
        sock.send(_HEADER.pack(_HEADER.size + _IFADDRMSG.size, _RTM_GETADDR,
                               _NLM_F_REQUEST | _NLM_F_DUMP, 1, 0)
                  + _IFADDRMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0))
        found: set[str] = set()
        while True:
            part, done = addresses_from_netlink(sock.recv(65536))
            found |= part
            if done:
                return found


def ipv4_from_fib_trie(text: str) -> set[str]:
    """The local IPv4 addresses in a ``fib_trie`` dump: a ``|-- A.B.C.D`` leaf followed by a
    ``/32 host LOCAL`` line."""
    found: set[str] = set()
    leaf = None
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("|--"):
            leaf = stripped[3:].strip()
        elif leaf and stripped.startswith("/32") and stripped.endswith("host LOCAL"):
            found.add(leaf)
    return found


def ipv6_from_if_inet6(text: str) -> set[str]:
    """The IPv6 addresses of an ``if_inet6`` table (hex address, index, prefix, scope, flags,
    device), without those whose duplicate address detection failed."""
    found: set[str] = set()
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 6 or len(fields[0]) != 32:
            continue
        try:
            if int(fields[4], 16) & _IFA_F_DADFAILED:
                continue
        except ValueError:
            continue
        hexa = fields[0]
        found.add(":".join(hexa[i:i + 4] for i in range(0, 32, 4)))
    return found


def reachable(addresses: set[str]) -> list[str]:
    """Addresses others may use: no loopback, link-local or unspecified address; at most
    ``MAX_ADDRESSES`` (the lowest, in sorted order)."""
    kept = []
    for text in addresses:
        try:
            addr = ipaddress.ip_address(text)
        except ValueError:
            continue
        if not (addr.is_loopback or addr.is_link_local or addr.is_unspecified):
            kept.append(addr)
    kept.sort(key=lambda a: (a.version, a))
    return [str(a) for a in kept[:MAX_ADDRESSES]]


def proc_addresses(fib_trie: str = FIB_TRIE, if_inet6: str = IF_INET6) -> set[str]:
    """Every address of this network namespace from /proc (a missing table counts as
    none: a kernel without IPv6 has no if_inet6)."""
    found: set[str] = set()
    for path, parse in ((fib_trie, ipv4_from_fib_trie), (if_inet6, ipv6_from_if_inet6)):
        try:
            with open(path, encoding="ascii", errors="replace") as f:
                found |= parse(f.read())
        except OSError:
            pass
    return found


def read_addresses() -> list[str]:
    """The reachable addresses of this network namespace."""
    try:
        found = netlink_addresses()
    except OSError as exc:
        log.debug("netlink address dump failed (%s): reading /proc", exc)
        found = proc_addresses()
    return reachable(found)


class AddressTracker:
    """Which heartbeat carries the addresses; reads the tables at most every ``every`` s."""

    def __init__(self, read: Callable[[], list[str]] = read_addresses,
                 clock: Callable[[], float] = time.monotonic, every: float = CHECK_EVERY) -> None:
        self._read = read
        self._clock = clock
        self._every = every
        self._lock = threading.Lock()
        self._current: str | None = None
        self._read_at: float | None = None
        self._sent: str | None = None
        self._repeat = 0

    def for_beat(self) -> str | None:
        """The ``addresses`` value for the beat being built, or None to leave it out."""
        with self._lock:
            now = self._clock()
            if self._read_at is None or now - self._read_at >= self._every:
                self._read_at = now
                self._refresh()
            if self._current is None:
                return None
            if self._current == self._sent and self._repeat <= 0:
                return None
            self._repeat -= 1
            self._sent = self._current
            return self._current

    def reconnected(self, beats: int = 1) -> None:
        """The next ``beats`` beats carry the set again: the DPE may have missed the last
        one, and the first beats after a broker restart may be routed nowhere (REBEATS)."""
        with self._lock:
            self._sent = None
            self._repeat = beats

    def _refresh(self) -> None:
        try:
            value = format_addresses(self._read())
        except (OSError, ValueError) as exc:
            log.warning("cannot read this assembly's addresses: %s", exc)
            return
        if self._current is not None and value != self._current:
            log.info("addresses changed: %r -> %r", self._current, value)
        self._current = value
