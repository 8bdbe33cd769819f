"""The broker-administration seam: create, update, list and delete pcloud's broker users.

Two backends behind one interface, next to the broker profile (``pcloud.bus.addressing``):

- ``RabbitmqctlAdmin``: the private node of a state dir (``pcloud-broker``), through
  ``rabbitmqctl`` with that node's name and Erlang cookie. A batch of users is created (or
  deleted) in one synchronous ``rabbitmqctl eval`` (~0.8 s here, whatever the batch size).
- ``ManagementAdmin``: an operator's RabbitMQ, through the management plugin's HTTP API with
  administrator credentials from the CPE's config.

``admin_from_config`` picks one: ``PCLOUD_BROKER_ADMIN`` or ``[broker_admin] url`` in the
config file (an ``http(s)://user:password@host:15672`` URL, or the path of a private broker's
state dir), else the private broker of ``PCLOUD_STATE_DIR`` when one was set up there.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Protocol

from pcloud.identity import UserSpec
from pcloud.urls import mask_url

log = logging.getLogger("pcloud.broker_admin")

VHOST = "/"
CTL_TIMEOUT = 60.0
CTL_ATTEMPTS = 3
CTL_RETRY_DELAY = 1.0      # seconds, times the attempt number
UNREACHABLE_NODE = "unable to perform an operation on node"
HTTP_TIMEOUT = 15.0


class BrokerAdminError(Exception):
    """The broker refused or could not be reached; the message says which and why."""


class BrokerAdmin(Protocol):
    """What pcloud needs from a broker's user database."""

    def put_users(self, specs: list[UserSpec]) -> None:
        """Create or update users with their passwords, tags and permissions."""

    def delete_users(self, names: list[str]) -> None:
        """Delete users (missing ones are fine) and close their connections."""

    def users(self) -> dict[str, tuple[str, ...]]:
        """Every user's tags, by name."""


_ACTOR = '<<"pcloud">>'
_PUT_USERS = (
    '{ok, Specs} = file:consult(PATH), '
    'lists:foreach(fun({U, P, Tags, {C, W, R}, {TW, TR}}) -> '
    'rabbit_auth_backend_internal:put_user(#{name => U, password => P, tags => Tags}, '
    f'{_ACTOR}), '
    f'ok = rabbit_auth_backend_internal:set_permissions(U, <<"/">>, C, W, R, {_ACTOR}), '
    'ok = rabbit_auth_backend_internal:set_topic_permissions(U, <<"/">>, <<"amq.topic">>, '
    f'TW, TR, {_ACTOR}) end, Specs), ok.')
# tracked_connection's 5th field is the connection's pid (rabbit_common/include/rabbit.hrl)
_DELETE_USERS = (
    '{ok, Users} = file:consult(PATH), '
    'lists:foreach(fun(U) -> '
    f'catch rabbit_auth_backend_internal:delete_user(U, {_ACTOR}), '
    'catch [rabbit_networking:close_connection(element(6, C), "credentials revoked") '
    '|| C <- rabbit_connection_tracking:list_of_user(U)] end, Users), ok.')


def _string(text: str) -> str:
    """An Erlang string literal."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _binary(text: str) -> str:
    return f"<<{_string(text)}>>"


def _user_term(spec: UserSpec) -> str:
    perms = spec.permissions
    tags = ", ".join(_binary(tag) for tag in spec.tags)
    return (f"{{{_binary(spec.user)}, {_binary(spec.password)}, [{tags}], "
            f"{{{_binary(perms.configure)}, {_binary(perms.write)}, {_binary(perms.read)}}}, "
            f"{{{_binary(perms.topic_write)}, {_binary(perms.topic_read)}}}}}.\n")


def definitions(specs: list[UserSpec]) -> dict:
    """RabbitMQ's definitions document for ``specs`` (users, permissions, topic permissions)."""
    users, permissions, topics = [], [], []
    for spec in specs:
        perms = spec.permissions
        users.append({"name": spec.user, "password": spec.password, "tags": list(spec.tags)})
        permissions.append({"user": spec.user, "vhost": VHOST, "configure": perms.configure,
                            "write": perms.write, "read": perms.read})
        topics.append({"user": spec.user, "vhost": VHOST, "exchange": "amq.topic",
                       "write": perms.topic_write, "read": perms.topic_read})
    return {"users": users, "permissions": permissions, "topic_permissions": topics}


def _ctl_error(done: subprocess.CompletedProcess) -> str:
    """rabbitmqctl's error line, with its first diagnostic (e.g. what epmd reported)."""
    text = [line.strip() for line in (done.stderr or done.stdout).splitlines() if line.strip()]
    errors = [line for line in text if line.startswith("Error")]
    if not errors:
        return text[-1] if text else f"exit status {done.returncode}"
    hints = [line.lstrip("* ") for line in text
             if line.startswith("*") and ("epmd" in line or "nodedown" in line
                                          or "TCP connection" in line)]
    return f"{errors[0]} ({hints[0]})" if hints else errors[0]


class RabbitmqctlAdmin:
    """The private node of one state dir, administered with ``rabbitmqctl``."""

    def __init__(self, state_dir: str | os.PathLike) -> None:
        from pcloud import broker

        self.state_dir = Path(state_dir)
        self._broker = broker
        if broker.load_settings(self.state_dir) is None:
            raise BrokerAdminError(f"no private broker was set up in {self.state_dir} "
                                   "(pcloud-broker start)")

    def _ctl(self, *args: str, quiet_missing: bool = False) -> str:
        """Run one rabbitmqctl command; every command pcloud runs is idempotent, so one the
        CLI could not deliver (its Erlang distribution link timing out on a starved host)
        is run again, up to :data:`CTL_ATTEMPTS` times."""
        settings = self._broker.load_settings(self.state_dir)
        env = self._broker.ctl_env(self.state_dir, settings)
        argv = [str(self._broker.RABBIT_BIN / "rabbitmqctl"), "-q", "-n", settings.node, *args]
        for attempt in range(1, CTL_ATTEMPTS + 1):
            try:
                done = subprocess.run(argv, env=env, capture_output=True, text=True,
                                      timeout=CTL_TIMEOUT, stdin=subprocess.DEVNULL)
            except (OSError, subprocess.TimeoutExpired) as exc:
                raise BrokerAdminError(f"rabbitmqctl {args[0]} failed: {exc}") from None
            output = done.stderr + done.stdout
            if done.returncode == 0:
                return done.stdout
            if quiet_missing and "does not exist" in output:
                return ""
            if UNREACHABLE_NODE not in output or attempt == CTL_ATTEMPTS:
                raise BrokerAdminError(f"rabbitmqctl {args[0]} failed: {_ctl_error(done)}")
            log.warning("rabbitmqctl %s could not reach node %s (attempt %d of %d): %s",
                        args[0], settings.node, attempt, CTL_ATTEMPTS, _ctl_error(done))
            time.sleep(CTL_RETRY_DELAY * attempt)
        raise AssertionError("not reached: the last attempt returns or raises")

    def put_users(self, specs: list[UserSpec]) -> None:
        """One ``rabbitmqctl eval`` for the whole batch, done when it returns. The passwords
        go through a 0600 file the node reads (``file:consult``), never a command line."""
        if not specs:
            return
        terms = "".join(_user_term(spec) for spec in specs)
        self._eval_with_file(terms, _PUT_USERS)

    def delete_users(self, names: list[str]) -> None:
        """One ``rabbitmqctl eval``: delete each user and close its connections."""
        if names:
            self._eval_with_file("".join(f"{_binary(name)}.\n" for name in names), _DELETE_USERS)

    def _eval_with_file(self, terms: str, program: str) -> None:
        fd, path = tempfile.mkstemp(prefix="pcloud-users-", suffix=".config",
                                    dir=self._broker.broker_dir(self.state_dir))
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(terms)
            out = self._ctl("eval", program.replace("PATH", _string(path)))
        finally:
            os.unlink(path)
        if out.strip() != "ok":
            raise BrokerAdminError(f"rabbitmqctl eval answered {out.strip()[:200]!r}")

    def users(self) -> dict[str, tuple[str, ...]]:
        text = self._ctl("list_users", "--formatter", "json")
        try:
            rows = json.loads(text or "[]")
        except ValueError:
            raise BrokerAdminError("rabbitmqctl list_users printed no JSON") from None
        return {row["user"]: tuple(row.get("tags") or ()) for row in rows}


class ManagementAdmin:
    """An operator's RabbitMQ through the management plugin's HTTP API (tested against
    3.10.8 in tests/test_broker_admin.py)."""

    def __init__(self, url: str) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise BrokerAdminError(f"broker admin URL {mask_url(url)!r} is not "
                                   "http(s)://user:password@host:port")
        if not parts.username:
            raise BrokerAdminError(f"broker admin URL {mask_url(url)!r} has no user")
        user = urllib.parse.unquote(parts.username)
        password = urllib.parse.unquote(parts.password or "")
        self._auth = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        host = parts.hostname + (f":{parts.port}" if parts.port else "")
        self.base = f"{parts.scheme}://{host}{parts.path.rstrip('/')}/api"
        self.where = mask_url(url)

    def _request(self, method: str, path: str, body: object = None,
                 missing_ok: bool = False) -> object:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.base + path, data=data, method=method)
        request.add_header("Authorization", self._auth)
        request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT) as response:
                text = response.read().decode("utf-8", errors="replace")
        except urllib.error.HTTPError as exc:
            if missing_ok and exc.code == 404:
                return None
            detail = exc.read().decode("utf-8", errors="replace")[:200]
            raise BrokerAdminError(f"{method} {path} on {self.where}: HTTP {exc.code} "
                                   f"{detail}") from None
        except (OSError, urllib.error.URLError) as exc:
            raise BrokerAdminError(f"cannot reach the management API at {self.where}: "
                                   f"{exc}") from None
        return json.loads(text) if text.strip() else None

    def put_users(self, specs: list[UserSpec]) -> None:
        """One request for the whole batch: ``POST /api/definitions`` merges, like import,
        and is done when it answers (an existing user gets the new password and tags)."""
        if specs:
            self._request("POST", "/definitions", definitions(specs))

    def delete_users(self, names: list[str]) -> None:
        """User first, then its connections. On 3.10.8 deleting the user already closes
        them; closing connections alone ends only an AMQP 1.0 client's sessions, which it
        reopens while its user exists (the connections path answers 204 even for none)."""
        for name in names:
            quoted = urllib.parse.quote(name, safe="")
            self._request("DELETE", f"/users/{quoted}", missing_ok=True)
            self._request("DELETE", f"/connections/username/{quoted}", missing_ok=True)

    def users(self) -> dict[str, tuple[str, ...]]:
        rows = self._request("GET", "/users") or []
        result = {}
        for row in rows:
            tags = row.get("tags") or []
            if isinstance(tags, str):           # older servers: "a,b"
                tags = [tag for tag in tags.split(",") if tag]
            result[row["name"]] = tuple(tags)
        return result


def admin_for(where: str) -> BrokerAdmin:
    """The backend named by ``where``: an http(s) URL, or a private broker's state dir."""
    if where.startswith(("http://", "https://")):
        return ManagementAdmin(where)
    return RabbitmqctlAdmin(where)


def admin_from_config() -> BrokerAdmin | None:
    """The configured seam (see the module docstring), or None when there is none."""
    from pcloud import broker, config

    where = os.environ.get("PCLOUD_BROKER_ADMIN") or config.section("broker_admin").get("url")
    if where:
        return admin_for(where)
    if broker.load_settings(config.state_dir()) is not None:
        return RabbitmqctlAdmin(config.state_dir())
    return None
