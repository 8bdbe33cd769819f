"""The DPE's bus methods: status, reload, stop, resource_cleanup, event_raise, events_query.

Handlers that read or change the runtime's state run on the main loop: the bus thread
queues the call and waits for its future. ``events_query`` only reads the store and is
answered on the bus thread. A mixin of :class:`dpe_agent.daemon.Dpe`.
"""

from __future__ import annotations

import logging
from concurrent.futures import Future

from lxml import etree

from dpe_agent.recovery import rebuild_policy
from dpe_agent.status import ComponentRecords, status_document, summary
from pcloud import schemas, xmlsafe
from pcloud.bus import Message, MethodError
from pcloud.deployable import Deployable, DeployableError, diff
from pcloud.events import MAX_SEQ, Event, EventType
from pcloud.states import DeployableState as D
from pcloud.states import ResourceState as R

log = logging.getLogger("dped")

REQUESTED_BY = "pcloud.requested_by"


class Methods:
    """Method handlers of the DPE queue (state-touching ones run on the main loop)."""

    def _handlers(self) -> dict:
        def on_loop(fn, check):
            def handler(body: etree._Element, msg: Message):
                check(body)
                future: Future = Future()
                who = msg.properties.get(REQUESTED_BY) or msg.user_id
                self.queue.put(("call", fn, body, future, str(who) if who else None))
                return future.result(timeout=30.0)
            return handler

        return {"deployable_status": on_loop(self._status, self._check_ref),
                "deployable_reload": on_loop(self._reload, self._check_reload),
                "deployable_stop": on_loop(self._stop_method, self._check_ref),
                "event_raise": on_loop(self._event_raise, self._check_event),
                "resource_cleanup": on_loop(self._resource_cleanup, self._check_resource_ref),
                "events_query": self._events_query}

    def _check_ref(self, body: etree._Element) -> None:
        """``<deployable name/>`` naming this DPE's deployable: a stop sent to the wrong
        queue must never stop this one."""
        _validate(body, "deployable_ref")
        self._check_name(body.get("name"))

    def _check_resource_ref(self, body: etree._Element) -> None:
        """``<resource deployable assembly name/>`` naming one of this deployable's."""
        _validate(body, "resource_ref")
        self._check_name(body.get("deployable"))
        if self._service(body.get("assembly"), body.get("name")) is None:
            raise MethodError("unknown_resource", f"{self.name} has no resource "
                              f"{body.get('assembly')}/{body.get('name')}")

    def _check_reload(self, body: etree._Element) -> None:
        if body.tag != "deployable":
            raise MethodError("invalid_request",
                              f"deployable_reload takes a <deployable> document, not <{body.tag}>")
        self._check_name(body.get("name"))

    def _check_event(self, body: etree._Element) -> None:
        """Only the CPE's ``config_error`` and ``hook_result`` may be raised: they change no
        state, and any other type would let a client forge state changes into the event log
        (and the CPE's stored state)."""
        _validate(body, "event_raise")
        self._check_name(body.get("deployable"))
        if body.get("type") not in (EventType.CONFIG_ERROR.value, EventType.HOOK_RESULT.value):
            raise MethodError("invalid_request", "event_raise raises config_error and "
                              f"hook_result events, not {body.get('type')!r}")
        if body.get("seq") is not None or body.get("time") is not None:
            raise MethodError("invalid_request", "event_raise numbers and dates the event "
                                                 "itself: leave out seq and time")

    def _check_name(self, name: str | None) -> None:
        if name != self.name:
            raise MethodError("wrong_deployable", f"this DPE manages {self.name!r}, not {name!r}")

    def _handle_call(self, fn, body: etree._Element, future: Future,
                     requested_by: str | None = None) -> None:
        """Run a method on the main loop; ``requested_by`` (who asked: the person behind the
        CPE's call) goes on the events the method causes."""
        self.requested_by = requested_by
        try:
            future.set_result(fn(body))
        except BaseException as exc:
            future.set_exception(exc)
        finally:
            self.requested_by = None

    def _summary(self) -> etree._Element:
        return summary(self.name, self.state())

    def _status(self, body: etree._Element) -> etree._Element:
        return status_document(self.dep, ComponentRecords(self.states, self.reasons,
                                                          self.fail_counts, self.failures,
                                                          self.addresses))

    def _stop_method(self, body: etree._Element) -> etree._Element:
        self._begin_stop()
        return etree.Element("deployable", name=self.name, state=D.STOPPING)

    def _resource_cleanup(self, body: etree._Element) -> etree._Element:
        asm, svc = body.get("assembly"), body.get("name")
        log.info("%s/%s cleaned up (asked by %s)", asm, svc, self.requested_by or "?")
        self._cleanup_resource(asm, svc)
        return etree.Element("resource", deployable=self.name, assembly=asm, name=svc,
                             state=self.state(asm, svc) or R.PENDING)

    def _event_raise(self, body: etree._Element) -> etree._Element:
        draft = Event.from_xml(body)
        event = self.emit(draft.type, draft.assembly, draft.resource, state=draft.state,
                          reason=draft.reason, **draft.extra)
        return event.to_element()

    def _events_query(self, body: etree._Element, msg: Message) -> etree._Element:
        _validate(body, "events")
        if body.get("deployable") is not None:
            self._check_name(body.get("deployable"))
        try:
            since = min(int(body.get("since_seq", "0")), MAX_SEQ)   # SQLite's 64-bit range
            limit = min(int(body.get("limit", "100")), 10000)
        except ValueError:
            raise MethodError("invalid_request", "since_seq and limit must be integers") from None
        root = etree.Element("events")
        for xml in self.store.events(since, limit):
            root.append(etree.fromstring(xml))
        return root

    def _reload(self, body: etree._Element) -> etree._Element:
        try:
            new = Deployable.from_xml(body, source="deployable_reload")
        except (DeployableError, xmlsafe.XMLError) as exc:
            raise MethodError("invalid_deployable", f"invalid deployable: {exc}") from None
        if new.name != self.name:
            raise MethodError("wrong_deployable",
                              f"this DPE manages {self.name!r}, not {new.name!r}")
        if new.infrastructure != self.dep.infrastructure:
            raise MethodError("invalid_request", "the infrastructure of a running deployable "
                              "cannot change; stop it and start it again")
        new = new.adopt_uuids(self.dep)
        change = diff(self.dep, new)
        old = self.dep
        self.dep = new
        self.store.set("deployable_xml", new.to_xml())
        self.policy = rebuild_policy(self.policy, new)
        removed = list(change.assemblies_removed)
        for asm in removed:
            self.tracker.forget(asm)
            for svc in old.assembly(asm).services:
                self.states.pop((asm, svc.name), None)
                self.store.delete_state("resource", f"{asm}/{svc.name}")
            self.incidents.drop((asm,))
        if removed:
            self._stop_removed(old, removed)
        for asm in change.assemblies_added:
            self._ensure_states(asm)
        for asm, _svc in change.services_added:
            if asm not in change.assemblies_added:
                self._ensure_states(asm)
        for asm, svc in change.services_changed:
            if self.blocked.pop((asm, svc), None) is not None:
                self._forget_resource(asm, svc)    # a new definition: probed afresh
        for asm in change.assemblies_changed:
            interval, misses = new.assembly(asm).heartbeat()
            watch = self.tracker.watches.get(asm)
            if watch is not None:
                watch.interval, watch.misses = interval, misses
        if change:
            self.emit(EventType.CONFIG_RELOAD, reason=_describe(change), **self._who())
            # New components start while the deployable keeps its state: running may not go
            # back to starting (pcloud.states), and nothing failed, so not degraded either.
            for asm in change.assemblies_added:
                self.adding.add((asm,))
                self.adding.update((asm, s.name) for s in new.assembly(asm).services)
            self.adding.update(change.services_added)
        self._abort("reload")
        return self._summary()


    def _who(self) -> dict[str, str]:
        return {"requested_by": self.requested_by} if self.requested_by else {}


def _validate(body: etree._Element, schema: str) -> None:
    """A request body that fails its schema is the caller's error: ``invalid_request``."""
    try:
        schemas.validate(body, schema)
    except xmlsafe.XMLError as exc:
        raise MethodError("invalid_request", f"{schema}: {exc.message}"
                          + (f" (line {exc.line})" if exc.line else "")) from None


def _describe(change) -> str:
    parts = []
    for label, items in (("assemblies added", change.assemblies_added),
                         ("assemblies removed", change.assemblies_removed),
                         ("services added", change.services_added),
                         ("services removed", change.services_removed),
                         ("services changed", change.services_changed)):
        if items:
            names = [i if isinstance(i, str) else "/".join(i) for i in items]
            parts.append(f"{label}: {', '.join(names)}")
    if change.dependencies_added or change.dependencies_removed:
        parts.append("dependencies changed")
    return "; ".join(parts) or "attributes changed"
