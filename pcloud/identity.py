"""Who may do what on the bus: the roles, their broker users and their exact permissions.

Every pcloud party logs in as a broker user of its own (docs/security.md):

- CPE: its configured login; everything pcloud does.
- DPE of D: ``dpe.D``; D's own queues and topic keys.
- agent of D/A: ``agent.D.A.<boot>``, fresh at every boot; its queue, its heartbeat and
  report keys, replies to D's DPE.
- operator: any name with tag ``pcloud-operator``; every CPE method, every event.
- observer: any name with tag ``pcloud-observer``; events, the read-only CPE methods.

The broker enforces the permissions below (and refuses a ``user_id`` that is not the sender's
login); every receiver checks the ``user_id`` again against the role that may send what it
received (``sender_may``), so a permission set too wide by mistake still grants nothing.
Names of deployables and assemblies never contain a dot, so user names cannot collide.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from types import ModuleType

from pcloud.wire import NAME, NAME_PATTERN

OPERATOR_TAG = "pcloud-operator"
OBSERVER_TAG = "pcloud-observer"
ROLES = ("operator", "observer")
DPE_PREFIX = "dpe."
AGENT_PREFIX = "agent."
READ_ONLY_METHODS = frozenset({"deployable_status", "deployables_list", "events_query"})
_NAME = NAME_PATTERN
_USER_NAME = NAME
_DPE_USER = re.compile(rf"^dpe\.({_NAME})$")
_AGENT_USER = re.compile(rf"^agent\.({_NAME})\.({_NAME})\.([0-9a-f]{{8,32}})$")
GENERATION = re.compile(r"^[0-9a-f]{0,8}$")
NOTHING = "^$"


@dataclass(frozen=True)
class Credentials:
    """A broker login. ``repr`` never shows the password (it ends up in logs otherwise)."""

    user: str
    password: str = field(repr=False)


@dataclass(frozen=True)
class Permissions:
    """RabbitMQ's regexes for one user on the vhost, plus its topic permissions on
    ``amq.topic`` (checked on publish and on bind, so binding ``#`` needs read on ``#``)."""

    configure: str
    write: str
    read: str
    topic_write: str
    topic_read: str


@dataclass(frozen=True)
class UserSpec:
    """A broker user to create or update, with its permissions and tags."""

    user: str
    password: str = field(repr=False)
    permissions: Permissions
    tags: tuple[str, ...] = ()

    @property
    def credentials(self) -> Credentials:
        return Credentials(self.user, self.password)


def _secrets() -> ModuleType:
    """The secrets module, imported on first use: it loads OpenSSL's hashlib (2.4 MiB of
    RSS), which a guest agent reading its config never needs (issue 13)."""
    import secrets

    return secrets


def new_password() -> str:
    return _secrets().token_urlsafe(24)


def dpe_user(deployable: str) -> str:
    return f"{DPE_PREFIX}{deployable}"


def agent_user(deployable: str, assembly: str, boot: str | None = None) -> str:
    """A fresh user for one boot of an assembly (``boot``: hex token, random by default)."""
    return f"{AGENT_PREFIX}{deployable}.{assembly}.{boot or _secrets().token_hex(6)}"


def agent_of(user: str | None) -> tuple[str, str] | None:
    """(deployable, assembly) of an agent user name, else None."""
    match = _AGENT_USER.fullmatch(user or "")
    return (match.group(1), match.group(2)) if match else None


def dpe_of(user: str | None) -> str | None:
    """The deployable of a DPE user name, else None."""
    match = _DPE_USER.fullmatch(user or "")
    return match.group(1) if match else None


def check_user_name(name: str) -> str:
    """An operator or observer name: letters, digits, ``_``, ``-`` (no dots: those are
    pcloud's own users)."""
    if not isinstance(name, str) or not _USER_NAME.fullmatch(name):
        raise ValueError(f"invalid user name {name!r}: use 1-64 letters, digits, '_' or '-'")
    return name


def reply_topic_key(user: str, token: str | None = None) -> str:
    """The topic key a party that may not write to queues (a DPE's agents) answers it on."""
    return f"pcloud.reply.{user}.{token or _secrets().token_hex(8)}"


def _one_of(*patterns: str) -> str:
    return "^(" + "|".join(patterns) + ")$"


_GEN = r"amq\.gen-.*"


def agent_permissions(deployable: str, assembly: str) -> Permissions:
    """Its own queue; publish its heartbeat, report and replies to its DPE; nothing else:
    no write on ``amq.default`` (that would reach every queue), no read on ``amq.topic``."""
    d, a = re.escape(deployable), re.escape(assembly)
    queue = rf"pcloud\.agent\.{d}\.{a}"
    return Permissions(
        configure=_one_of(queue), write=_one_of(r"amq\.topic"), read=_one_of(queue),
        topic_write=_one_of(rf"pcloud\.(heartbeat|report)\.{d}\.{a}",
                            rf"pcloud\.reply\.dpe\.{d}\.[0-9a-f]+"),
        topic_read=NOTHING)


def dpe_permissions(deployable: str) -> Permissions:
    """D's queue, D's agents' queues, D's events and DPE heartbeat, D's beats and reports.
    Configure on ``pcloud.cpe`` (its agents' logins come from the CPE) and on callers' reply
    queues (``pcloud.reply.<uuid>``: attaching a sender declares the queue), write on
    ``amq.default`` to answer there and to reach its agents."""
    d = re.escape(deployable)
    return Permissions(
        configure=_one_of(rf"pcloud\.dpe\.{d}", rf"pcloud\.agent\.{d}\.[^.]+", _GEN,
                          r"pcloud\.reply\.[0-9a-f-]+", r"pcloud\.cpe"),
        write=_one_of(r"amq\.default", r"amq\.topic", rf"pcloud\.agent\.{d}\.[^.]+", _GEN),
        read=_one_of(rf"pcloud\.dpe\.{d}", r"amq\.topic", _GEN),
        topic_write=_one_of(rf"pcloud\.event\.{d}\.[^.]+\.[^.]+", rf"pcloud\.heartbeat\.{d}\.-"),
        topic_read=_one_of(rf"pcloud\.(heartbeat|report)\.{d}\.[^.]+",
                           rf"pcloud\.reply\.dpe\.{d}\.[0-9a-f]+"))


def cpe_permissions() -> Permissions:
    everything = _one_of(r"pcloud\..*", _GEN, r"amq\.default", r"amq\.topic")
    return Permissions(configure=everything, write=everything, read=everything,
                       topic_write=r"^pcloud\..*", topic_read=r"^pcloud\..*")


def client_permissions() -> Permissions:
    """Operators and observers: call ``pcloud.cpe`` (and a by-hand DPE) from a reply queue of
    their own, read events. What each may call is the receiver's decision (its tag)."""
    return Permissions(
        configure=_one_of(r"pcloud\.cpe", r"pcloud\.dpe\.[^.]+", r"pcloud\.reply\..+", _GEN),
        write=_one_of(r"amq\.default", r"pcloud\.reply\..+", _GEN),
        read=_one_of(r"pcloud\.reply\..+", r"amq\.topic", _GEN),
        topic_write=NOTHING, topic_read=r"^pcloud\.event\..+$")


def agent_spec(deployable: str, assembly: str, generation: str = "") -> UserSpec:
    """A fresh agent login; its boot token starts with ``generation`` (hex: the minting
    DPE's own, so that a prune never deletes what that DPE just minted)."""
    boot = generation + _secrets().token_hex(6)
    return UserSpec(agent_user(deployable, assembly, boot), new_password(),
                    agent_permissions(deployable, assembly))


def boot_token(user: str) -> str:
    """The boot token of an agent user name ("" for any other name)."""
    match = _AGENT_USER.fullmatch(user or "")
    return match.group(3) if match else ""


def dpe_spec(deployable: str) -> UserSpec:
    return UserSpec(dpe_user(deployable), new_password(), dpe_permissions(deployable))


def client_spec(name: str, role: str, password: str | None = None) -> UserSpec:
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r} (known: {', '.join(ROLES)})")
    tag = OPERATOR_TAG if role == "operator" else OBSERVER_TAG
    return UserSpec(check_user_name(name), password or new_password(), client_permissions(),
                    (tag,))


def role_of_tags(tags: list[str] | tuple[str, ...] | set[str]) -> str | None:
    """operator, observer or None, from a broker user's tags (operator wins)."""
    if OPERATOR_TAG in tags:
        return "operator"
    if OBSERVER_TAG in tags:
        return "observer"
    return None


def client_may_call(role: str | None, method: str) -> bool:
    """Operators call everything, observers only the read-only methods."""
    return role == "operator" or (role == "observer" and method in READ_ONLY_METHODS)
