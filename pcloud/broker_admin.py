"""The broker-administration seam: create, update, list and delete pcloud's broker users.

Two backends behind one interface, next to the broker profile (``pcloud.bus.addressing``):

- ``RabbitmqctlAdmin``: the private node of a state dir (``pcloud-broker``), through
  ``rabbitmqctl`` with that node's name and Erlang cookie. Users are created in one
  ``import_definitions`` call per batch (a call costs ~0.6 s here, whatever the batch size).
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
HTTP_TIMEOUT = 15.0
IMPORT_WAIT = 10.0


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
        settings = self._broker.load_settings(self.state_dir)
        env = self._broker.ctl_env(self.state_dir, settings)
        argv = [str(self._broker.RABBIT_BIN / "rabbitmqctl"), "-q", "-n", settings.node, *args]
        try:
            done = subprocess.run(argv, env=env, capture_output=True, text=True,
                                  timeout=CTL_TIMEOUT, stdin=subprocess.DEVNULL)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise BrokerAdminError(f"rabbitmqctl {args[0]} failed: {exc}") from None
        if done.returncode != 0:
            text = (done.stderr or done.stdout).strip().splitlines()
            message = text[-1] if text else f"exit status {done.returncode}"
            if quiet_missing and "does not exist" in (done.stderr + done.stdout):
                return ""
            raise BrokerAdminError(f"rabbitmqctl {args[0]} failed: {message}")
        return done.stdout

    def put_users(self, specs: list[UserSpec]) -> None:
        if not specs:
            return
        fd, path = tempfile.mkstemp(prefix="pcloud-users-", suffix=".json",
                                    dir=self._broker.broker_dir(self.state_dir))
        try:
            with os.fdopen(fd, "w") as handle:   # 0600 from mkstemp: it holds passwords
                json.dump(definitions(specs), handle)
            self._ctl("import_definitions", path)
        finally:
            os.unlink(path)
        self._wait_imported({spec.user for spec in specs})

    def _wait_imported(self, names: set[str]) -> None:
        """``import_definitions`` may return before the import is done: wait for the users."""
        deadline = time.monotonic() + IMPORT_WAIT
        while not names <= set(self.users()):
            if time.monotonic() > deadline:
                raise BrokerAdminError(f"users {sorted(names - set(self.users()))} were not "
                                       f"created within {IMPORT_WAIT:g} s")
            time.sleep(0.1)

    def delete_users(self, names: list[str]) -> None:
        for name in names:
            self._ctl("delete_user", name, quiet_missing=True)
            self._ctl("close_all_user_connections", name, "credentials revoked",
                      quiet_missing=True)

    def users(self) -> dict[str, tuple[str, ...]]:
        text = self._ctl("list_users", "--formatter", "json")
        try:
            rows = json.loads(text or "[]")
        except ValueError:
            raise BrokerAdminError("rabbitmqctl list_users printed no JSON") from None
        return {row["user"]: tuple(row.get("tags") or ()) for row in rows}


class ManagementAdmin:
    """An operator's RabbitMQ through the management plugin's HTTP API."""

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
        """One request for the whole batch: the definitions endpoint merges, like import."""
        if specs:
            self._request("POST", "/definitions", definitions(specs))

    def delete_users(self, names: list[str]) -> None:
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
