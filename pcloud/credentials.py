"""Broker credentials: how they are minted, handed over, and kept out of sight.

- An ``Issuer`` gives each boot of an assembly a fresh agent user and revokes old ones. The
  CPE holds the broker-administration seam (``pcloud.broker_admin``); a DPE it manages asks it
  over the bus (``CpeIssuer``, methods ``credentials_issue`` / ``credentials_revoke`` that only
  that deployable's DPE user may call). A DPE run by hand with the seam itself uses
  ``LocalIssuer``.
- Credentials travel in a file of their own (``user=`` / ``password=`` lines, mode 0600) or a
  pipe, never in a URL that lands in an environment, a command line or a log.
"""

from __future__ import annotations

import logging
import os
import urllib.parse
from pathlib import Path
from typing import Protocol

from lxml import etree

from pcloud.identity import AGENT_PREFIX, Credentials, agent_of, agent_spec, boot_token

log = logging.getLogger("pcloud.credentials")

ISSUE_METHOD = "credentials_issue"
REVOKE_METHOD = "credentials_revoke"
CPE_QUEUE = "pcloud.cpe"
CALL_TIMEOUT = 30.0       # minting a batch costs a rabbitmqctl round trip or two
#: Variables that may carry a secret: never passed on to a process pcloud starts.
SECRET_VARIABLES = frozenset({"PCLOUD_BROKER_URL", "PCLOUD_BROKER_ADMIN"})


class CredentialsError(Exception):
    """Credentials could not be minted, revoked or read; the message says why."""


class Issuer(Protocol):
    """Mints and revokes a deployable's agent logins. ``generation`` (a few hex digits,
    one per DPE start) prefixes the boot token of what that DPE mints, so its start-up
    ``prune`` cannot delete logins it minted meanwhile."""

    def issue(self, assemblies: list[str], generation: str = "") -> dict[str, Credentials]:
        """A fresh agent login for one boot of each assembly."""

    def revoke(self, users: list[str]) -> None:
        """Delete these agent users of the deployable (their connections are closed)."""

    def prune(self, keep: list[str], generation: str = "") -> None:
        """Delete every agent user of the deployable but ``keep`` and those of
        ``generation`` (a DPE that starts forgets the spares of the one before it)."""


class LocalIssuer:
    """Mints with the broker-administration seam directly (the CPE, or ``dped`` by hand)."""

    def __init__(self, admin, deployable: str) -> None:
        self.admin = admin
        self.deployable = deployable

    def issue(self, assemblies: list[str], generation: str = "") -> dict[str, Credentials]:
        specs = {name: agent_spec(self.deployable, name, generation) for name in assemblies}
        self.admin.put_users(list(specs.values()))
        return {name: spec.credentials for name, spec in specs.items()}

    def revoke(self, users: list[str]) -> None:
        mine = sorted({u for u in users if (agent_of(u) or ("",))[0] == self.deployable})
        if mine:
            self.admin.delete_users(mine)

    def prune(self, keep: list[str], generation: str = "") -> None:
        prefix = f"{AGENT_PREFIX}{self.deployable}."
        self.revoke([u for u in self.admin.users() if u.startswith(prefix) and u not in keep
                     and not (generation and boot_token(u).startswith(generation))])


class CpeIssuer:
    """Asks the CPE, which checks that the caller is this deployable's DPE."""

    def __init__(self, bus, deployable: str, cpe_user: str | None) -> None:
        self.bus = bus
        self.deployable = deployable
        self.senders = {cpe_user} if cpe_user else None

    def issue(self, assemblies: list[str], generation: str = "") -> dict[str, Credentials]:
        request = etree.Element("credentials", deployable=self.deployable,
                                generation=generation)
        for name in assemblies:
            etree.SubElement(request, "assembly", name=name)
        result = self.bus.call(CPE_QUEUE, ISSUE_METHOD, request, timeout=CALL_TIMEOUT,
                               senders=self.senders)
        found = {} if result is None else {
            agent.get("assembly"): Credentials(agent.get("user", ""), agent.get("password", ""))
            for agent in result.iter("agent")}
        missing = [name for name in assemblies if not found.get(name)]
        if missing:
            raise CredentialsError(f"the CPE issued no credentials for {', '.join(missing)}")
        return {name: found[name] for name in assemblies}

    def revoke(self, users: list[str]) -> None:
        self._revoke(users, keep=False)

    def prune(self, keep: list[str], generation: str = "") -> None:
        self._revoke(keep, keep=True, generation=generation)

    def _revoke(self, users: list[str], keep: bool, generation: str = "") -> None:
        """``<credentials deployable keep="true|false" generation><agent user/>…``."""
        request = etree.Element("credentials", deployable=self.deployable,
                                keep="true" if keep else "false", generation=generation)
        for user in users:
            etree.SubElement(request, "agent", user=user)
        self.bus.call(CPE_QUEUE, REVOKE_METHOD, request, timeout=CALL_TIMEOUT,
                      senders=self.senders)


def scrubbed_environ(**extra: str) -> dict[str, str]:
    """This process's environment without secrets, plus ``extra``: what a child gets."""
    env = {k: v for k, v in os.environ.items() if k not in SECRET_VARIABLES}
    env.update(extra)
    return env


def with_credentials(url: str, credentials: Credentials) -> str:
    """``url`` logging in as ``credentials`` (whatever login it named before)."""
    parts = urllib.parse.urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    auth = (urllib.parse.quote(credentials.user, safe="") + ":"
            + urllib.parse.quote(credentials.password, safe=""))
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{auth}@{host}"))


def without_credentials(url: str) -> str:
    """``url`` with its user and password removed (safe for an environment or a log)."""
    parts = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


def credentials_of(url: str) -> Credentials | None:
    parts = urllib.parse.urlsplit(url)
    if not parts.username:
        return None
    return Credentials(urllib.parse.unquote(parts.username),
                       urllib.parse.unquote(parts.password or ""))


def format_credentials(credentials: Credentials, **extra: str) -> str:
    lines = [f"user={credentials.user}", f"password={credentials.password}"]
    lines += [f"{key}={value}" for key, value in extra.items()]
    return "\n".join(lines) + "\n"


def parse_credentials(text: str, source: str) -> tuple[Credentials, dict[str, str]]:
    """``user=`` and ``password=`` lines (plus any other ``key=value``), as written by
    ``format_credentials``; CredentialsError names what is wrong, never the password."""
    values: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep:
            raise CredentialsError(f"{source}:{number}: expected key=value")
        values[key.strip()] = value.strip()
    user, password = values.pop("user", ""), values.pop("password", "")
    if not user or not password:
        raise CredentialsError(f"{source}: needs both user= and password=")
    return Credentials(user, password), values


def read_credentials_file(path: str | os.PathLike) -> tuple[Credentials, dict[str, str]]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CredentialsError(f"cannot read credentials {path}: {exc}") from None
    return parse_credentials(text, str(path))


def read_credentials_fd(fd: int) -> tuple[Credentials, dict[str, str]]:
    """From a pipe the parent wrote and closed (``dped --credentials-fd``)."""
    try:
        with os.fdopen(fd, "r", encoding="utf-8") as handle:
            text = handle.read(65536)
    except (OSError, UnicodeDecodeError) as exc:
        raise CredentialsError(f"cannot read credentials from fd {fd}: {exc}") from None
    return parse_credentials(text, f"fd {fd}")
