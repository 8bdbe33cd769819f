"""The CPE's public methods (DESIGN §3) and what it does with events and DPE heartbeats.

Every handler checks its whole input before it changes anything, so a refused request leaves
the store and the running DPEs exactly as they were. A refusal that names a deployable also
becomes a ``config_error`` event: numbered by the deployable's DPE when it runs (so ``seq``
stays one sequence), else numbered and persisted by the CPE itself.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from lxml import etree

from cpe_agent.store import (
    DESIRED_RUNNING,
    DESIRED_STOPPED,
    MAX_QUERY_LIMIT,
    Store,
    StoredDeployable,
    StoredEvent,
    StoreError,
)
from cpe_agent.supervisor import Supervisor
from pcloud import identity, schemas, xmlsafe
from pcloud.bus import Bus, BusError, Message, MethodError
from pcloud.bus.dedup import RecentIds
from pcloud.credentials import ISSUE_METHOD, REVOKE_METHOD, LocalIssuer
from pcloud.deployable import Deployable, DeployableError, diff
from pcloud.events import MAX_SEQ, Event, format_time
from pcloud.infrastructures import problem as infrastructure_problem
from pcloud.wire import NAME
from pcloud.wire.heartbeat import Heartbeat, HeartbeatError

log = logging.getLogger("pcloud.cpe")

CPE_QUEUE = "pcloud.cpe"
EVENT_TOPICS = "pcloud.event.#"
DPE_HEARTBEATS = "pcloud.heartbeat.*.-"
DPE_CALL_TIMEOUT = 5.0
STATUS_TIMEOUT = 3.0
DPE_EXIT_WAIT = 10.0
SERVE_WORKERS = 8
CHANGES = frozenset({"deployable_start", "deployable_stop", "deployable_reload",
                     "deployable_delete"})
DPE_METHODS = frozenset({ISSUE_METHOD, REVOKE_METHOD})
REQUESTED_BY = "pcloud.requested_by"
LOGGED_SENDERS = 4096      # wrong senders remembered so that each is logged once
MAX_SEQ_JUMP = 1_000_000    # an event this far past the stored history is not believed
BACKFILL_PAGE = 500
_NAME = NAME

Handler = Callable[[etree._Element, Message], etree._Element]


def dpe_queue(name: str) -> str:
    return f"pcloud.dpe.{name}"


def _result(name: str, state: str, reason: str | None = None) -> etree._Element:
    element = etree.Element("deployable", name=name, state=state)
    if reason:
        element.set("reason", reason[:4096])
    return element


def _check(root: etree._Element, schema: str, what: str) -> None:
    """Validate a request body; a wrong one is the caller's error, not ours."""
    try:
        schemas.validate(root, schema)
    except xmlsafe.XMLError as exc:
        raise MethodError("invalid_request", f"{what}: {exc.message}") from None


class CpeService:
    """Method handlers on ``pcloud.cpe``, plus event persistence and DPE liveness input."""

    def __init__(self, store: Store, supervisor: Supervisor, bus: Bus, admin=None,
                 roles=None, infrastructures: frozenset[str] | None = None) -> None:
        self.store = store
        self.supervisor = supervisor
        self.bus = bus
        self.admin = admin
        self.roles = roles
        self.infrastructures = infrastructures
        self._starting = threading.Lock()
        self._forged = RecentIds(LOGGED_SENDERS)   # (sender, deployable) already logged
        self.on_stored: Callable[[etree._Element], None] | None = None   # operator hooks
        self.listeners: list[Callable[[etree._Element], None]] = []     # metrics, console

    def handlers(self) -> dict[str, Handler]:
        return {
            ISSUE_METHOD: self.credentials_issue,
            REVOKE_METHOD: self.credentials_revoke,
            "user_add": self.user_add,
            "user_list": self.user_list,
            "user_remove": self.user_remove,
            "deployable_start": self.deployable_start,
            "deployable_stop": self.deployable_stop,
            "deployable_reload": self.deployable_reload,
            "deployable_delete": self.deployable_delete,
            "deployable_status": self.deployable_status,
            "resource_cleanup": self.resource_cleanup,
            "deployables_list": self.deployables_list,
            "events_query": self.events_query,
        }

    @staticmethod
    def serial_key(method: str, body: etree._Element, msg: Message) -> str | None:
        """Changes to one deployable run one at a time, in arrival order; everything else
        (and changes to other deployables) runs concurrently, so a frozen DPE holds up only
        the requests that must wait for it."""
        if method in CHANGES and body.tag == "deployable":
            return body.get("name") or None
        return None

    def authorize(self, method: str, msg: Message) -> str | None:
        """Why ``msg``'s sender may not call ``method`` (None: it may). DPEs call only the
        credential methods (the handler checks the deployable); people by their role."""
        user = msg.user_id
        if method in DPE_METHODS:
            return None if identity.dpe_of(user) else f"only a DPE may call {method}"
        if user == self.bus.user:
            return None
        role = self.roles.role(user) if self.roles is not None else None
        if identity.client_may_call(role, method):
            return None
        if role == "observer":
            return (f"user {user!r} is an observer: observers may call only "
                    f"{', '.join(sorted(identity.READ_ONLY_METHODS))}")
        return f"user {user!r} has no pcloud role (operator or observer)"

    # --- methods -----------------------------------------------------------------------

    def deployable_start(self, body: etree._Element, msg: Message) -> etree._Element:
        name = body.get("name") if body.tag == "deployable" else None
        stored = self.store.get(name) if name and _NAME.match(name) else None
        if stored is None:
            dep = self._parse_deployable(body, "deployable_start")
        else:
            # Started again (after a stop): its components keep their uuids, as its DPE
            # keeps them (adopt_uuids), so list, status and a later reload all agree.
            dep = self._parse_deployable(body, "deployable_start", assign_uuids=False)
            old = Deployable.from_xml(stored.document, source="stored document")
            dep = dep.adopt_uuids(old).with_uuids()
        problem = infrastructure_problem(dep.infrastructure, self.infrastructures)
        if problem is not None:
            self._refuse(dep.name, "infrastructure_unavailable", problem)
        with self._starting:
            refusal = self._claim(dep)
        if refusal is not None:
            self._refuse(dep.name, *refusal)
        self.supervisor.requested_by[dep.name] = msg.user_id or ""
        self.supervisor.write_document(dep.name, dep.to_xml())
        self.supervisor.tick()
        log.info("deployable %s accepted from %s: starting its DPE", dep.name, msg.user_id)
        return _result(dep.name, "starting")

    def _claim(self, dep: Deployable) -> tuple[str, str] | None:
        """Store a new deployable unless its uuid or name is taken: (code, message) if so.
        Starts of different names run concurrently, so check and insert under one lock."""
        assert dep.uuid is not None
        other = self.store.find_uuid(dep.uuid)
        if other is not None and other.name != dep.name:
            return "duplicate_uuid", f"uuid {dep.uuid} already belongs to deployable {other.name!r}"
        clash = self._assembly_uuid_owner(dep)
        if clash is not None:
            return "duplicate_uuid", clash
        try:
            self.store.start(dep.name, dep.uuid, dep.to_xml(), "starting")
        except StoreError as exc:
            return "duplicate_deployable", str(exc)
        return None

    def _assembly_uuid_owner(self, dep: Deployable) -> str | None:
        """Why ``dep`` may not run if one of its assembly uuids is another stored deployable's
        (two agents with one identity: each DPE would take the other's beats), else None."""
        mine = {a.uuid: a.name for a in dep.assemblies if a.uuid}
        for stored in self.store.list():
            if stored.name == dep.name:
                continue
            document = xmlsafe.parse(stored.document, source="stored document")
            for assembly in document.iter("assembly"):
                uuid = assembly.get("uuid")
                if uuid in mine:
                    return (f"assembly {mine[uuid]!r} has uuid {uuid}, already used by assembly "
                            f"{assembly.get('name')!r} of deployable {stored.name!r}")
        return None

    def deployable_stop(self, body: etree._Element, msg: Message) -> etree._Element:
        stored = self._named(body, "deployable_stop")
        if stored.desired == DESIRED_STOPPED:     # idempotent: the contract's one answer
            return _result(stored.name, "stopping",
                           "already stopped" if stored.state == "stopped" else
                           "already stopping")
        self.store.set_desired(stored.name, DESIRED_STOPPED, "stopping")
        self.supervisor.stop_requested(stored.name)
        if self.supervisor.is_running(stored.name):
            try:
                self.request_stop(stored.name, msg.user_id)
            except (BusError, MethodError) as exc:
                log.warning("DPE of %s did not take the stop yet (%s): will retry",
                            stored.name, exc)
        log.info("deployable %s stopping (asked by %s)", stored.name, msg.user_id)
        return _result(stored.name, "stopping")

    def resource_cleanup(self, body: etree._Element, msg: Message) -> etree._Element:
        """Forget a resource's failures and blocking, so its DPE probes it and starts it
        again (``crm_resource --cleanup``): for after fixing what blocked it."""
        _check(body, "resource_ref", "resource_cleanup")
        name = body.get("deployable", "")
        stored = self.store.get(name)
        if stored is None:
            raise MethodError("unknown_deployable", f"no deployable named {name!r}")
        if not self.supervisor.is_running(name):
            raise MethodError("not_running", f"deployable {name!r} is {stored.state}: its "
                              "resources are probed afresh when it starts")
        log.info("resource %s/%s/%s cleaned up (asked by %s)", name, body.get("assembly"),
                 body.get("name"), msg.user_id)
        return self._call_dpe(name, "resource_cleanup", etree.tostring(body, encoding="unicode"),
                              timeout=DPE_CALL_TIMEOUT, requested_by=msg.user_id)

    def request_stop(self, name: str, requested_by: str | None = None) -> None:
        """Ask a DPE to stop its deployable (it exits once everything is stopped)."""
        ref = etree.tostring(etree.Element("deployable", name=name), encoding="unicode")
        self._call_dpe(name, "deployable_stop", ref, timeout=DPE_CALL_TIMEOUT,
                       requested_by=requested_by)

    def _call_dpe(self, name: str, method: str, body: str, timeout: float,
                  requested_by: str | None = None):
        """A method of deployable ``name``'s DPE; only that DPE's login may answer, and the
        person who asked (if any) rides along for the DPE's event."""
        properties = {REQUESTED_BY: requested_by} if requested_by else None
        return self.bus.call(dpe_queue(name), method, body, timeout=timeout,
                             properties=properties, senders={identity.dpe_user(name)})

    def deployable_reload(self, body: etree._Element, msg: Message) -> etree._Element:
        name = body.get("name") if body.tag == "deployable" else None
        stored = self.store.get(name) if name else None
        if name and _NAME.match(name) and stored is None:
            self._refuse(name, "unknown_deployable",
                         f"no deployable named {name!r}: start it before reloading it")
        dep = self._parse_deployable(body, "deployable_reload", assign_uuids=False)
        assert stored is not None
        if dep.uuid is not None and dep.uuid != stored.uuid:
            other = self.store.find_uuid(dep.uuid)
            owner = f"deployable {other.name!r}" if other is not None else "no deployable"
            self._refuse(dep.name, "name_mismatch",
                         f"document has uuid {dep.uuid} ({owner}) but deployable "
                         f"{dep.name!r} has uuid {stored.uuid}: a reload cannot rename or "
                         "replace a deployable")
        old = Deployable.from_xml(stored.document, source="stored document")
        new = dep.adopt_uuids(old).with_uuids()
        if not diff(old, new):
            return _result(dep.name, stored.state, "unchanged")
        document = new.to_xml()
        if self.supervisor.is_answering(dep.name) and stored.desired == DESIRED_RUNNING:
            try:
                self._call_dpe(dep.name, "deployable_reload", document,
                               timeout=DPE_CALL_TIMEOUT, requested_by=msg.user_id)
            except MethodError as exc:
                self._refuse(dep.name, exc.code, f"the DPE refused the reload: {exc.message}")
            except BusError as exc:
                log.warning("DPE of %s did not answer the reload (%s): it reads the new "
                            "document when it restarts", dep.name, exc)
        self.store.replace_document(dep.name, document)
        self.supervisor.write_document(dep.name, document)
        log.info("deployable %s reloaded (asked by %s)", dep.name, msg.user_id)
        current = self.store.get(dep.name)
        return _result(dep.name, current.state if current else stored.state)

    def deployable_delete(self, body: etree._Element, msg: Message) -> etree._Element:
        """Forget a stopped deployable: store rows, event history and its DPE's files."""
        stored = self._named(body, "deployable_delete")
        if stored.desired != DESIRED_STOPPED or stored.state != "stopped":
            self._refuse(stored.name, "not_stopped",
                         f"deployable {stored.name!r} is {stored.state}: stop it first "
                         "(deployable_stop), then delete it")
        deadline = time.monotonic() + DPE_EXIT_WAIT     # "stopped" comes just before its exit
        while self.supervisor.is_running(stored.name) and time.monotonic() < deadline:
            time.sleep(0.1)
        try:
            self.supervisor.delete(stored.name, lambda: self.store.delete(stored.name))
        except StoreError as exc:
            self._refuse(stored.name, "not_stopped", str(exc))
        log.info("deployable %s deleted", stored.name)
        return _result(stored.name, "stopped", "deleted")

    def deployable_status(self, body: etree._Element, msg: Message) -> etree._Element:
        stored = self._named(body, "deployable_status", event=False)
        if self.supervisor.is_running(stored.name):
            try:
                result = self._call_dpe(stored.name, "deployable_status",
                                       etree.tostring(body, encoding="unicode"),
                                       timeout=STATUS_TIMEOUT)
                if result is not None and result.tag == "deployable":
                    self.store.set_last_status(stored.name,
                                               etree.tostring(result, encoding="unicode"))
                    return result
            except (BusError, MethodError) as exc:
                log.info("DPE of %s not answering status (%s): last known state",
                         stored.name, exc)
        return self._last_known_status(stored)

    def deployables_list(self, body: etree._Element, msg: Message) -> etree._Element:
        if body.tag != "deployables" or len(body):
            raise MethodError("invalid_request", "deployables_list takes <deployables/>")
        result = etree.Element("deployables")
        for stored in self.store.list():
            element = etree.SubElement(result, "deployable", name=stored.name,
                                       state=stored.state, uuid=stored.uuid)
            try:
                document = xmlsafe.parse(stored.document, source="stored document")
            except xmlsafe.XMLError:
                continue
            element.set("infrastructure", document.get("infrastructure", "process"))
            element.set("assemblies", " ".join(a.get("name", "")
                                               for a in document.iter("assembly")))
        return result

    def events_query(self, body: etree._Element, msg: Message) -> etree._Element:
        if body.tag != "events" or len(body):
            raise MethodError("invalid_request",
                              'events_query takes <events deployable="…" since_seq="…" '
                              'limit="…"/>')
        _check(body, "events", "events_query")
        name = body.get("deployable")
        # The schema bounds neither: a seq above SQLite's 64-bit range matches nothing.
        try:
            since = min(int(body.get("since_seq", "0")), MAX_SEQ)
            limit = min(int(body.get("limit", "100")), MAX_QUERY_LIMIT)
        except ValueError:      # e.g. more digits than int() takes (4300)
            raise MethodError("invalid_request", "since_seq and limit must be integers below "
                                                 f"{MAX_SEQ}") from None
        if name and self.store.get(name) is None and not self.store.max_seq(name):
            raise MethodError("unknown_deployable", f"no deployable named {name!r}")
        result = etree.Element("events")
        for event in self.store.events(name, since, limit):
            result.append(xmlsafe.parse(event.xml, source="stored event"))
        return result

    # --- identities --------------------------------------------------------------------

    def _caller_deployable(self, body: etree._Element, msg: Message) -> str:
        """The deployable a DPE's credentials request is about: its own, or a refusal."""
        name = body.get("deployable", "") if body.tag == "credentials" else ""
        if identity.dpe_of(msg.user_id) != name or self.store.get(name) is None:
            raise MethodError("not_authorized", f"{msg.user_id!r} may not handle the "
                                                f"credentials of deployable {name!r}")
        return name

    @staticmethod
    def _generation(body: etree._Element) -> str:
        generation = body.get("generation", "")
        if not identity.GENERATION.fullmatch(generation):
            raise MethodError("invalid_request", "generation must be at most 8 hex digits")
        return generation

    def _issuer(self, name: str) -> LocalIssuer:
        if self.admin is None:
            raise MethodError("no_broker_admin", "this CPE cannot administer the broker's "
                                                 "users (see docs/security.md)")
        return LocalIssuer(self.admin, name)

    def credentials_issue(self, body: etree._Element, msg: Message) -> etree._Element:
        """Fresh agent users for the next boot of some assemblies of the caller's deployable."""
        name = self._caller_deployable(body, msg)
        stored = Deployable.from_xml(self.store.get(name).document, source="stored document")
        known = {a.name for a in stored.assemblies}
        wanted = [a.get("name", "") for a in body.iter("assembly")]
        unknown = [a for a in wanted if a not in known]
        if not wanted or unknown or len(wanted) > len(known) * 4:
            raise MethodError("invalid_request", f"credentials_issue names no assembly of "
                                                 f"{name} or unknown ones: {unknown[:5]}")
        generation = self._generation(body)
        try:
            issued = self._issuer(name).issue(wanted, generation)
        except Exception as exc:
            raise MethodError("broker_admin_failed", str(exc)) from None
        result = etree.Element("credentials", deployable=name)
        for assembly, credentials in issued.items():
            etree.SubElement(result, "agent", assembly=assembly, user=credentials.user,
                             password=credentials.password)
        log.info("issued %d agent credentials to the DPE of %s", len(issued), name)
        return result

    def credentials_revoke(self, body: etree._Element, msg: Message) -> etree._Element:
        name = self._caller_deployable(body, msg)
        users = [a.get("user", "") for a in body.iter("agent")]
        if any((identity.agent_of(u) or ("",))[0] != name for u in users):
            raise MethodError("invalid_request", f"credentials_revoke names users that are "
                                                 f"not agents of {name}")
        issuer = self._issuer(name)
        try:
            if body.get("keep") == "true":
                issuer.prune(users, self._generation(body))
            else:
                issuer.revoke(users)
        except Exception as exc:
            raise MethodError("broker_admin_failed", str(exc)) from None
        return etree.Element("credentials", deployable=name)

    def user_add(self, body: etree._Element, msg: Message) -> etree._Element:
        """``<user name role="operator|observer"/>``: a broker user for a person; the result
        carries its generated password, shown once."""
        if body.tag != "user":
            raise MethodError("invalid_request", 'user_add takes <user name="…" '
                                                 'role="operator|observer"/>')
        try:
            spec = identity.client_spec(body.get("name", ""), body.get("role", ""))
        except ValueError as exc:
            raise MethodError("invalid_request", str(exc)) from None
        existing = self._users()
        if spec.user in existing or spec.user == self.bus.user:
            raise MethodError("duplicate_user", f"user {spec.user!r} exists already")
        self._admin_call(lambda: self.admin.put_users([spec]))
        if self.roles is not None:
            self.roles.forget()
        log.info("user %s added as %s by %s", spec.user, body.get("role"), msg.user_id)
        return etree.Element("user", name=spec.user, role=body.get("role", ""),
                             password=spec.password)

    def user_list(self, body: etree._Element, msg: Message) -> etree._Element:
        result = etree.Element("users")
        for name, tags in sorted(self._users().items()):
            role = identity.role_of_tags(tags)
            if role is not None:
                etree.SubElement(result, "user", name=name, role=role)
        return result

    def user_remove(self, body: etree._Element, msg: Message) -> etree._Element:
        name = body.get("name", "") if body.tag == "user" else ""
        role = identity.role_of_tags(self._users().get(name, ()))
        if role is None:
            raise MethodError("unknown_user", f"no operator or observer named {name!r}")
        if name in (self.bus.user, msg.user_id):
            raise MethodError("invalid_request", f"user {name!r} is the one calling or the "
                                                 "CPE's own login: it cannot be removed here")
        self._admin_call(lambda: self.admin.delete_users([name]))
        if self.roles is not None:
            self.roles.forget()
        log.info("user %s removed by %s", name, msg.user_id)
        return etree.Element("user", name=name, role=role)

    def _users(self) -> dict[str, tuple[str, ...]]:
        return self._admin_call(lambda: self.admin.users())

    def _admin_call(self, action):
        if self.admin is None:
            raise MethodError("no_broker_admin", "this CPE cannot administer the broker's "
                                                 "users (see docs/security.md)")
        try:
            return action()
        except Exception as exc:
            raise MethodError("broker_admin_failed", str(exc)) from None

    # --- helpers -----------------------------------------------------------------------

    def _parse_deployable(self, body: etree._Element, method: str,
                          assign_uuids: bool = True) -> Deployable:
        if body.tag != "deployable":
            raise MethodError("invalid_request",
                              f"{method} takes a <deployable> document, not <{body.tag}>")
        try:
            return Deployable.from_xml(body, source=method, assign_uuids=assign_uuids)
        except (DeployableError, xmlsafe.XMLError) as exc:
            name = body.get("name")
            message = f"invalid deployable: {exc}"
            if name and _NAME.match(name):
                self._refuse(name, "invalid_deployable", message)
            raise MethodError("invalid_deployable", message) from None

    def _named(self, body: etree._Element, method: str, event: bool = True
               ) -> StoredDeployable:
        """The stored deployable a ``<deployable name="…"/>`` request refers to. Only a
        change (``event``) refused for a typo becomes a config_error event: a read-only
        request never publishes or stores anything."""
        _check(body, "deployable_ref", method)
        name = body.get("name", "")
        stored = self.store.get(name)
        if stored is None and not event:
            raise MethodError("unknown_deployable", f"no deployable named {name!r}")
        if stored is None:
            self._refuse(name, "unknown_deployable", f"no deployable named {name!r}")
        assert stored is not None
        return stored

    def _refuse(self, name: str, code: str, message: str) -> None:
        """Answer with an error, after telling everyone with a config_error event."""
        try:
            self.raise_config_error(name, f"{code}: {message}")
        except Exception:
            log.exception("could not raise the config_error event of %s", name)
        raise MethodError(code, message)

    def raise_config_error(self, name: str, reason: str) -> None:
        self.raise_event(etree.Element("event", type="config_error", deployable=name,
                                       reason=reason[:4096]))

    def raise_event(self, request: etree._Element) -> None:
        """Number, store and publish an event the CPE raises (config_error, hook_result):
        by the DPE's ``event_raise`` while it runs (one seq sequence), else here."""
        name, kind = request.get("deployable", ""), request.get("type", "")
        if self.supervisor.is_running(name):
            try:
                raised = self._call_dpe(name, "event_raise",
                                       etree.tostring(request, encoding="unicode"),
                                       timeout=DPE_CALL_TIMEOUT)
                if raised is not None:
                    self._persist(raised)
                    return
            except (BusError, MethodError) as exc:
                log.info("DPE of %s could not raise the %s (%s)", name, kind, exc)
        draft = Event.from_xml(request)
        stored = self.supervisor.number_event(
            name, lambda seq: self._stored(draft.with_seq(seq)))
        self.bus.publish(_topic_of(stored), Message(body=stored.xml, subject=kind,
                                                    opcode="event"))
        self._tell(xmlsafe.parse(stored.xml, source="event"))

    def _last_known_status(self, stored: StoredDeployable) -> etree._Element:
        reason = ("last known state: the DPE is not answering"
                  if stored.desired == DESIRED_RUNNING else None)
        if stored.last_status and stored.desired == DESIRED_RUNNING:
            result = xmlsafe.parse(stored.last_status, source="last status")
            result.set("state", stored.state)
            if reason:
                result.set("reason", reason)
            return result
        result = _result(stored.name, stored.state, reason)
        idle = "stopped" if stored.state == "stopped" else "pending"
        document = xmlsafe.parse(stored.document, source="stored document")
        for assembly in document.iter("assembly"):
            element = etree.SubElement(result, "assembly", name=assembly.get("name", ""),
                                       state=idle)
            for service in assembly.iter("service"):
                etree.SubElement(element, "resource", name=service.get("name", ""),
                                 state=idle, fail_count="0")
        return result

    # --- bus input ---------------------------------------------------------------------

    def on_event(self, msg: Message) -> None:
        """Persist an event seen on ``pcloud.event.#`` once per (deployable, seq), if it
        comes from that deployable's DPE (our own config_errors are stored already)."""
        try:
            root = xmlsafe.parse(msg.body, source="event")
            schemas.validate(root, "event")
        except xmlsafe.XMLError as exc:
            log.warning("dropped an invalid event from %s: %s", msg.user_id, exc)
            return
        if msg.user_id == self.bus.user:
            return
        if not self._from_dpe_of(msg, root.get("deployable", ""), "event"):
            return
        self._persist(root)

    def _from_dpe_of(self, msg: Message, name: str, what: str) -> bool:
        """Whether ``msg`` was sent by deployable ``name``'s DPE; else logged (once per
        sender and deployable) and False."""
        if msg.user_id == identity.dpe_user(name):
            return True
        if not self._forged.seen(f"{msg.user_id}\0{name}"):
            log.warning("dropped a %s of deployable %r from %r: only %s may send it", what,
                        name, msg.user_id, identity.dpe_user(name))
        return False

    def _persist(self, root: etree._Element) -> bool:
        """Store an event once per (deployable, seq); True when it was new (then the
        operator hooks see it: every stored event passes here or through ``raise_event``)."""
        event = Event.from_xml(root)
        if event.seq is None:
            raise xmlsafe.XMLError("event has no seq")
        ceiling = self.store.max_seq(event.deployable) + MAX_SEQ_JUMP
        if event.seq > ceiling:
            log.warning("dropped event seq %d of %s: more than %d past the stored history",
                        event.seq, event.deployable, MAX_SEQ_JUMP)
            return False
        if not self.store.add_event(self._stored(event)):
            return False
        if event.type == "deployable_state_change" and event.assembly in (None, "-") \
                and event.state:
            self.store.set_state(event.deployable, event.state)
        self._tell(root)
        return True

    def _tell(self, root: etree._Element) -> None:
        """A newly stored event to the hooks and the listeners; a listener's failure is
        logged, never the event's."""
        if self.on_stored is not None:
            self.on_stored(root)
        for listener in self.listeners:
            try:
                listener(root)
            except Exception:
                log.exception("event listener %r failed", listener)

    @staticmethod
    def _stored(event: Event) -> StoredEvent:
        assert event.seq is not None
        return StoredEvent(event.deployable, event.seq, event.type.value,
                           format_time(event.time), event.to_xml())

    def on_heartbeat(self, msg: Message) -> None:
        """A DPE heartbeat: liveness for the supervisor, state for the store. Only a valid
        one counts: a garbage "heartbeat" must neither keep a hung DPE alive nor reach the
        store."""
        try:
            root = xmlsafe.parse(msg.body, source="heartbeat")
            schemas.validate(root, "heartbeat")
            beat = Heartbeat.from_xml(root)
        except (xmlsafe.XMLError, HeartbeatError) as exc:
            log.warning("dropped an invalid DPE heartbeat: %s", exc)
            return
        if msg.opcode != "heartbeat":
            log.warning("dropped a DPE heartbeat with opcode %r", msg.opcode)
            return
        name = beat.deployable
        if beat.assembly != "-":
            return
        if not self._from_dpe_of(msg, name, "DPE heartbeat"):
            return
        first = self.supervisor.heartbeat(name, beat.interval, beat.started)
        stored = self.store.get(name)
        state = beat.state
        if stored is not None and state and stored.desired == DESIRED_RUNNING:
            self.store.set_state(name, state)
        if first:
            threading.Thread(target=self.backfill, args=(name,), name=f"backfill-{name}",
                             daemon=True).start()

    def backfill(self, name: str) -> None:
        """Fetch the events a DPE published while this CPE was not listening."""
        since = self.store.contiguous_seq(name)
        while True:
            query = etree.Element("events", since_seq=str(since), limit=str(BACKFILL_PAGE))
            try:
                result = self._call_dpe(name, "events_query",
                                       etree.tostring(query, encoding="unicode"),
                                       timeout=DPE_CALL_TIMEOUT)
            except (BusError, MethodError) as exc:
                log.info("back-fill of %s's events failed: %s", name, exc)
                return
            events = [] if result is None else list(result.iter("event"))
            added = 0
            for element in events:
                try:
                    self._persist(element)
                    added += 1
                except Exception as exc:
                    log.warning("skipped a bad back-filled event of %s: %s", name, exc)
            if added:
                log.info("back-filled %d events of %s", added, name)
            if len(events) < BACKFILL_PAGE:
                return
            since = max(int(e.get("seq", "0")) for e in events)


def _topic_of(event: StoredEvent) -> str:
    root = xmlsafe.parse(event.xml, source="event")
    return Event.from_xml(root).topic_key()
