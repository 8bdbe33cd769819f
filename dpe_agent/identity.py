"""The DPE's own broker identity, who may call it, and its assemblies' per-boot logins.

A DPE logs in as ``dpe.<deployable>`` (docs/security.md):

- started by the CPE (``--managed``), it reads that login from the pipe the CPE hands it
  (``--credentials-fd``), answers only the CPE's login, and asks the CPE for agent logins;
- started by hand, it needs the broker-administration seam (the private broker of its state
  dir, or ``PCLOUD_BROKER_ADMIN``): it mints its own login, answers the person who started it
  and every operator, and mints agent logins itself.

``AgentLogins`` gives every boot of an assembly a fresh agent user, so a fenced copy that
comes back is locked out; the DPE acts on a heartbeat, report or operation result only from
the assembly's current user. A spare login per assembly is minted ahead, so a restart never
waits for the broker's administration (~1-2 s a batch here); the user each running assembly
uses is kept in the DPE's store, so a restarted DPE adopts running agents.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass

from dpe_agent.store import DpeStore
from pcloud import identity
from pcloud.bus import Bus, Message
from pcloud.credentials import (
    CpeIssuer,
    CredentialsError,
    Issuer,
    LocalIssuer,
    credentials_of,
    read_credentials_fd,
    with_credentials,
)
from pcloud.identity import Credentials
from pcloud.rolebook import RoleBook

log = logging.getLogger("dped")

READ_ONLY = frozenset({"deployable_status", "events_query"})
SPARE_WAIT = 30.0
ADMIN_DELAY = 5.0
REFILL_HOLD_MAX = 120.0


@dataclass
class DpeIdentity:
    """How a DPE logs in, whose calls it takes, and where its agents' logins come from."""

    url: str
    make_issuer: Callable[[Bus], Issuer]
    authorize: Callable[[str, Message], str | None]


def managed_identity(deployable: str, base_url: str, fd: int) -> DpeIdentity:
    """A DPE started by the CPE: its login from the pipe; only the CPE may call it."""
    credentials, extra = read_credentials_fd(fd)
    if credentials.user != identity.dpe_user(deployable):
        raise CredentialsError(f"the credentials handed over are for {credentials.user!r}, "
                               f"not {identity.dpe_user(deployable)!r}")
    cpe_user = extra.get("cpe_user") or None

    def authorize(method: str, msg: Message) -> str | None:
        if cpe_user is not None and msg.user_id == cpe_user:
            return None
        return f"only the CPE ({cpe_user}) calls this DPE"

    return DpeIdentity(with_credentials(base_url, credentials),
                       lambda bus: CpeIssuer(bus, deployable, cpe_user), authorize)


def local_identity(deployable: str, base_url: str, admin) -> DpeIdentity:
    """A DPE started by hand with the broker-administration seam: it mints its own login.
    Whoever started it (the login of ``base_url``) and every operator may call it; observers
    may read its status and events."""
    starter = credentials_of(base_url)
    spec = identity.dpe_spec(deployable)
    admin.put_users([spec])
    roles = RoleBook(admin, fixed={starter.user: "operator"} if starter else None)

    def authorize(method: str, msg: Message) -> str | None:
        role = roles.role(msg.user_id)
        if role == "operator" or (role == "observer" and method in READ_ONLY):
            return None
        return f"user {msg.user_id!r} ({role or 'no pcloud role'}) may not call {method}"

    return DpeIdentity(with_credentials(base_url, spec.credentials),
                       lambda bus: LocalIssuer(admin, deployable), authorize)


class AgentLogins:
    """Per-boot agent logins of one deployable's assemblies (thread-safe).

    ``for_boot`` runs on a pool thread just before the driver boots an assembly; the main
    loop reads ``expected`` for every heartbeat and report.
    """

    STORE_KEY = "agent_users"

    def __init__(self, issuer: Issuer, store: DpeStore, pool: Executor,
                 admin_delay: float = ADMIN_DELAY) -> None:
        self.issuer = issuer
        self.admin_delay = admin_delay
        self.store = store
        self.pool = pool
        self._lock = threading.Lock()
        self._minted = threading.Condition(self._lock)
        self._current: dict[str, str] = dict(store.load_json(self.STORE_KEY, {}))
        self._spares: dict[str, Credentials] = {}
        self._refilling: set[str] = set()
        self.generation = secrets.token_hex(2)     # this DPE's: prune spares it
        # Broker administration after boots, gathered over ADMIN_DELAY into one batch each
        # (a boot storm would otherwise run two rabbitmqctl evals per boot).
        self._to_refill: set[str] = set()
        self._to_revoke: list[str] = []
        self._batch_timer: threading.Timer | None = None
        self._held_since: float | None = None      # refills held while boots take turns

    def expected(self, assembly: str) -> str | None:
        return self._current.get(assembly)

    def users(self) -> dict[str, str]:
        with self._lock:
            return dict(self._current)

    def start(self, assemblies: list[str]) -> None:
        """At DPE start: forget every login but those of running agents, mint spares."""
        keep = list(self.users().values())
        self.pool.submit(self._guarded, "prune",
                         lambda: self.issuer.prune(keep, self.generation))
        self._refill(assemblies)

    def for_boot(self, assembly: str) -> Credentials:
        """A fresh login for this boot; the previous boot's is revoked. A spare being minted
        is waited for (the first boots of a deployable share one batch)."""
        with self._minted:
            self._minted.wait_for(lambda: assembly not in self._refilling, SPARE_WAIT)
            credentials = self._spares.pop(assembly, None)
        if credentials is None:
            credentials = self.issuer.issue([assembly], self.generation)[assembly]
        with self._lock:
            old = self._current.get(assembly)
            self._current[assembly] = credentials.user
            self.store.save_json(self.STORE_KEY, self._current)
        self._later(refill=assembly, revoke=old if old != credentials.user else None)
        return credentials

    def retire(self, assembly: str, user: str | None) -> None:
        """The boot that used login ``user`` is off (stopped or fenced): that login is
        revoked. A newer boot's login (the assembly was booted again meanwhile) stays."""
        with self._lock:
            if user is None or self._current.get(assembly) != user:
                return
            old = self._current.pop(assembly)
            self.store.save_json(self.STORE_KEY, self._current)
        if old:
            self._later(revoke=old)

    def retire_all(self) -> None:
        """The deployable stopped: no login of it is left on the broker."""
        with self._lock:
            self._current.clear()
            self._spares.clear()
            self.store.save_json(self.STORE_KEY, self._current)
        self._guarded("prune", lambda: self.issuer.prune([]))

    def hold_refills(self, hold: bool) -> None:
        """While boots are queued or in flight (the main loop says so each tick), spares are
        not refilled, for at most ``REFILL_HOLD_MAX`` s: every refill is a CPU-heavy broker
        administration run, and a storm cannot afford them (issue 13: ten DPEs booting 100
        assemblies each ran about two ``rabbitmqctl`` a second, and their agents' beats came
        late). A spare is only needed for an assembly's next boot, which mints its own login
        if none is ready. Revocations are never held: they lock out fenced copies."""
        with self._lock:
            if not hold:
                self._held_since = None
            elif self._held_since is None:
                self._held_since = time.monotonic()

    def _holding(self) -> bool:
        return (self._held_since is not None
                and time.monotonic() - self._held_since < REFILL_HOLD_MAX)

    def _refill(self, assemblies: list[str]) -> None:
        with self._lock:
            wanted = [a for a in assemblies
                      if a not in self._spares and a not in self._refilling]
            self._refilling.update(wanted)
        if wanted:
            self.pool.submit(self._guarded, "mint spares", lambda: self._mint(wanted))

    def _mint(self, assemblies: list[str]) -> None:
        issued: dict[str, Credentials] = {}
        try:
            issued = self.issuer.issue(assemblies, self.generation)
        finally:
            with self._minted:
                self._spares.update(issued)
                self._refilling.difference_update(assemblies)
                self._minted.notify_all()

    def _later(self, refill: str | None = None, revoke: str | None = None) -> None:
        """Mint a spare for ``refill`` and revoke login ``revoke`` on the pool after
        ``ADMIN_DELAY``, together with whatever else comes meanwhile: administering the
        broker costs a CPU-heavy ``rabbitmqctl`` run that would otherwise compete with the
        boot it follows, once per boot. The old login is useless meanwhile (the DPE expects
        the new one)."""
        with self._lock:
            if refill:
                self._to_refill.add(refill)
            if revoke:
                self._to_revoke.append(revoke)
            if self._batch_timer is not None:
                return
            self._batch_timer = threading.Timer(self.admin_delay, self._flush)
            self._batch_timer.daemon = True
        self._batch_timer.start()

    def _flush(self) -> None:
        with self._lock:
            held = self._holding()
            refill = [] if held else sorted(self._to_refill)
            self._to_refill -= set(refill)
            revoke, self._to_revoke = self._to_revoke, []
            self._batch_timer = None
            again = bool(self._to_refill)
        if revoke:
            self._submit("revoke", lambda: self.issuer.revoke(revoke))
        if refill:
            self._submit("mint spares", lambda: self._refill(refill))
        if again:
            self._later()           # the held refills: looked at again after the delay

    def _submit(self, what: str, action: Callable[[], object]) -> None:
        try:
            self.pool.submit(self._guarded, what, action)
        except RuntimeError:            # the DPE is exiting: its start-up prune tidies up
            log.info("agent logins: %s skipped, the DPE is exiting", what)

    @staticmethod
    def _guarded(what: str, action: Callable[[], object]) -> None:
        try:
            action()
        except Exception as exc:
            log.warning("agent logins: %s failed: %s", what, exc)
