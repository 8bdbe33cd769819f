"""Who is an operator or an observer: the broker's user tags, read through the admin seam.

The broker is the one place where people's accounts live (``pcloudsh user_add`` creates
them there), so nothing else has to be kept in step. Lookups are cached; an unknown name
re-reads the table at most every ``REFRESH_GAP`` seconds, so a new user works at once and a
flood of unknown names costs nothing. ``forget`` drops the cache after a change.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from pcloud.identity import role_of_tags

log = logging.getLogger("pcloud.roles")

TTL = 30.0
REFRESH_GAP = 2.0


class RoleBook:
    """Roles by broker user name; ``fixed`` roles (e.g. the CPE's own login) need no lookup."""

    def __init__(self, admin, fixed: dict[str, str] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.admin = admin
        self.fixed = dict(fixed or {})
        self.clock = clock
        self._lock = threading.Lock()
        self._roles: dict[str, str | None] = {}
        self._loaded: float | None = None

    def role(self, user: str | None) -> str | None:
        if not user:
            return None
        if user in self.fixed:
            return self.fixed[user]
        with self._lock:
            now = self.clock()
            stale = self._loaded is None or now - self._loaded > TTL
            unknown = user not in self._roles and (self._loaded is None
                                                   or now - self._loaded > REFRESH_GAP)
            if stale or unknown:
                self._reload(now)
            return self._roles.get(user)

    def forget(self) -> None:
        with self._lock:
            self._loaded = None

    def _reload(self, now: float) -> None:
        if self.admin is None:
            self._loaded = now
            return
        try:
            users = self.admin.users()
        except Exception as exc:
            log.warning("cannot read the broker's users (%s): keeping the roles known", exc)
            self._loaded = now
            return
        self._roles = {name: role_of_tags(tags) for name, tags in users.items()}
        self._loaded = now
