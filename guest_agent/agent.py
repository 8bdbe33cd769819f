"""The agent: resources it knows, their operations, recurring monitors, probes and reports.

Sources of truth about a resource, and what each does:
- method calls (start/stop/monitor): run the operation, answer with ``<op_result>``;
- a ``process`` resource's exit (reaper thread), a recurring monitor, a failing probe: update
  the state and, when the rc changed, publish a ``<report>`` at once.
Operations on one resource are serialized by its lock; recurring monitors skip a tick while an
operation runs. What the agent knows (resource definitions, recurring monitors, last rc) is
kept in ``<state>/specs/`` so a restarted agent resumes monitoring and reports what changed.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import asdict

from lxml import etree

from guest_agent import __version__
from guest_agent import reaper as reaping
from guest_agent.config import AgentConfig
from guest_agent.monitors import Job, ProbeState, Scheduler, check_probe
from guest_agent.requests import op_result, parse_op, report
from guest_agent.resources import make_resource
from guest_agent.resources.base import (
    OCF_NOT_RUNNING,
    OCF_SUCCESS,
    OpResult,
    ProbeSpec,
    Resource,
    ResourceError,
    ResourceSpec,
)
from guest_agent.resources.ocf import clear_rsctmp_after_reboot
from pcloud import wire
from pcloud.bus import BusError, Message, MethodError
from pcloud.wire.agent_info import AgentInfo

log = logging.getLogger(__name__)

Publisher = Callable[[str, Message], None]


class Entry:
    """One resource the agent knows, with its last observed rc and state."""

    def __init__(self, resource: Resource) -> None:
        self.resource = resource
        self.op_lock = threading.Lock()
        self.state = "pending"
        self.rc = OCF_NOT_RUNNING
        self.reason = ""
        self.last_change = wire.now()
        self.monitors: dict[int, tuple[Job, float]] = {}
        self.probes: list[tuple[ProbeState, Job]] = []

    @property
    def name(self) -> str:
        return self.resource.name

    def report_interval(self) -> int:
        return min(self.monitors) if self.monitors else 0


class Agent:
    """Everything but the transport: the bus adapter calls :meth:`handle`."""

    def __init__(self, config: AgentConfig, publish: Publisher | None = None) -> None:
        self.config = config
        self.publish_fn = publish
        self.started = wire.now()
        self.reaper = reaping.shared()
        self.scheduler = Scheduler()
        self._entries: dict[str, Entry] = {}
        self._lock = threading.Lock()
        self._specs_dir = os.path.join(config.state_dir, "specs")
        self.reaper.on_orphan_exit(self._orphan_exit)

    # -- lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        """Start reaping and resume what a previous agent knew (monitors, probes)."""
        os.makedirs(self._specs_dir, exist_ok=True)
        if clear_rsctmp_after_reboot(self.config.state_dir):
            log.info("first start since this machine booted: OCF state (HA_RSCTMP) emptied")
        for path in sorted(os.listdir(self._specs_dir)):
            if path.endswith(".json"):
                self._restore(os.path.join(self._specs_dir, path))

    def stop(self) -> None:
        self.scheduler.stop()

    def states(self) -> dict[str, str]:
        with self._lock:
            return {name: e.state for name, e in self._entries.items()}

    # -- methods ------------------------------------------------------------------------

    def handle(self, method: str, root: etree._Element) -> etree._Element:
        """Answer one method; MethodError for anything the caller got wrong."""
        if method == "agent_info":
            return self.agent_info(root)
        if method == "resource_status":
            return self.resource_status(root)
        operation = method.removeprefix("resource_")
        if operation not in ("start", "stop", "monitor", "cancel") or operation == method:
            raise MethodError("unknown_method", f"the guest agent has no method {method!r}")
        spec, interval, timeout = parse_op(root, operation)
        if operation == "cancel":
            return self.cancel(spec.name, interval)
        entry = self._entry_for(spec)
        if operation == "monitor" and interval > 0:
            return self.add_monitor(entry, interval, timeout)
        with entry.op_lock:
            result = self._run(entry, operation, timeout)
        return op_result(entry.name, operation, interval, result)

    def agent_info(self, root: etree._Element) -> etree._Element:
        if root.tag != "agent":
            raise MethodError("invalid_request", f"agent_info expects <agent/>, got <{root.tag}>")
        c = self.config
        return AgentInfo(c.deployable, c.assembly, os.getpid(), self.started, __version__,
                         c.uuid).to_xml()

    def resource_status(self, root: etree._Element) -> etree._Element:
        if root.tag != "resources":
            raise MethodError("invalid_request",
                              f"resource_status expects <resources/>, got <{root.tag}>")
        out = etree.Element("resources")
        with self._lock:
            entries = sorted(self._entries.values(), key=lambda e: e.name)
        for e in entries:
            elem = etree.SubElement(out, "resource", name=e.name, state=e.state, rc=str(e.rc),
                                    last_change=e.last_change, **{"class": e.resource.spec.cls})
            pid = getattr(e.resource, "running_pid", lambda: None)()
            if pid:
                elem.set("pid", str(pid))
            if e.monitors:
                elem.set("monitor_interval", str(e.report_interval()))
            if e.reason:
                elem.set("reason", e.reason[:4096])
        return out

    def add_monitor(self, entry: Entry, interval: int, timeout: float) -> etree._Element:
        """Run the monitor once now (its result is the answer), then every interval ms."""
        with entry.op_lock:
            result = self._run(entry, "monitor", timeout, interval)
            old = entry.monitors.pop(interval, None)
            if old:
                old[0].cancel()
            job = self._schedule_monitor(entry, interval, timeout)
            entry.monitors[interval] = (job, timeout)
            self._save(entry)
        return op_result(entry.name, "monitor", interval, result)

    def cancel(self, name: str, interval: int) -> etree._Element:
        with self._lock:
            entry = self._entries.get(name)
        if entry is None:
            raise MethodError("unknown_resource", f"the agent knows no resource {name!r}")
        old = entry.monitors.pop(interval, None)
        if old:
            old[0].cancel()
            self._save(entry)
        reason = "" if old else f"no recurring monitor of {interval} ms was running"
        return op_result(name, "cancel", interval, OpResult(OCF_SUCCESS, reason=reason))

    # -- events -------------------------------------------------------------------------

    def on_reconnect(self) -> None:
        """Re-send every resource's state: a DPE that missed reports converges."""
        with self._lock:
            entries = list(self._entries.values())
        for entry in entries:
            if entry.state != "pending":
                self._report(entry, OpResult(entry.rc, reason=entry.reason))

    def _process_failed(self, entry: Entry, reason: str, output: str) -> None:
        """A process resource died on its own: runs on the reaper thread, reports at once."""
        self._observe(entry, OpResult(OCF_NOT_RUNNING, reason=reason, output=output), True)

    def _orphan_exit(self, pid: int) -> None:
        """A process nobody watches died (e.g. an OCF agent's daemon): monitor OCF/LSB now."""
        with self._lock:
            entries = [e for e in self._entries.values()
                       if e.monitors and not e.resource.watches_exit() and e.state == "running"]
        for entry in entries:
            interval, (_, timeout) = min(entry.monitors.items())
            self.scheduler.run_soon(lambda e=entry, i=interval, t=timeout:
                                    self._recurring(e, i, t))

    # -- internals ----------------------------------------------------------------------

    def _entry_for(self, spec: ResourceSpec) -> Entry:
        """The entry of spec.name, rebuilt when the definition changed."""
        with self._lock:
            entry = self._entries.get(spec.name)
            if entry is not None and entry.resource.spec.same_definition(spec):
                if entry.resource.spec.probes != spec.probes:
                    entry.resource.spec = spec
                    self._set_probes(entry)
                return entry
            if entry is not None:
                entry.resource.close()
            try:
                resource = make_resource(spec, self.reaper, self.config.state_dir)
            except ResourceError as exc:
                raise MethodError(exc.code, exc.message) from None
            if entry is None:
                entry = Entry(resource)
                self._entries[spec.name] = entry
            else:
                entry.resource = resource
            resource.on_failure = lambda reason, out, e=entry: self._process_failed(e, reason, out)
            self._set_probes(entry)
        self._save(entry)
        return entry

    def _run(self, entry: Entry, operation: str, timeout: float, interval: int = 0) -> OpResult:
        """One operation under the entry's lock; updates the state, never reports."""
        res = entry.resource
        if operation == "start":
            self._set_state(entry, "starting")
            result = res.start(timeout)
        elif operation == "stop":
            for job, _ in entry.monitors.values():
                job.cancel()
            entry.monitors.clear()
            self._set_state(entry, "stopping")
            result = res.stop(timeout)
        else:
            result = self._with_probes(entry, res.monitor(timeout, interval))
        self._observe(entry, result, False, operation)
        return result

    def _schedule_monitor(self, entry: Entry, interval: int, timeout: float) -> Job:
        """A recurring monitor; a class that watches its process's exit monitors by reading
        /proc, quick enough for the scheduler's own thread (no worker thread kept for it)."""
        return self.scheduler.add(f"{entry.name}-monitor-{interval}", interval / 1000.0,
                                  lambda: self._recurring(entry, interval, timeout),
                                  inline=entry.resource.watches_exit())

    def _recurring(self, entry: Entry, interval: int, timeout: float) -> None:
        if not entry.op_lock.acquire(blocking=False):
            return
        try:
            if interval not in entry.monitors:
                return
            result = self._with_probes(entry, entry.resource.monitor(timeout, interval))
            self._observe(entry, result, True, "monitor", interval)
        finally:
            entry.op_lock.release()

    def _with_probes(self, entry: Entry, result: OpResult) -> OpResult:
        if result.rc != OCF_SUCCESS:
            return result
        for state, _ in entry.probes:
            if state.failing:
                return OpResult(OCF_NOT_RUNNING, "done", state.reason or "probe failed",
                                result.output, result.duration_ms)
        return result

    def _observe(self, entry: Entry, result: OpResult, report: bool, operation: str = "monitor",
                 interval: int | None = None) -> None:
        """Record a result; a reported source publishes when the rc changed."""
        with self._lock:
            changed = result.rc != entry.rc or entry.state in ("pending", "starting", "stopping")
            old_rc = entry.rc
            entry.rc = result.rc
            entry.reason = result.reason
            if result.rc == OCF_SUCCESS:
                state = "stopped" if operation == "stop" else "running"
            elif result.rc == OCF_NOT_RUNNING and (
                    operation == "stop" or entry.state in ("pending", "stopped")):
                state = "stopped"
            else:
                state = "failed"
            if operation == "stop" and result.rc == OCF_SUCCESS:
                entry.rc = OCF_NOT_RUNNING
            if state == "running" and entry.state != "running":
                for probe, _ in entry.probes:
                    probe.reset()
            self._set_state_locked(entry, state)
        if report and old_rc != result.rc:
            self._report(entry, result, interval)
        if changed:
            self._save(entry)

    def _set_state(self, entry: Entry, state: str) -> None:
        with self._lock:
            self._set_state_locked(entry, state)

    @staticmethod
    def _set_state_locked(entry: Entry, state: str) -> None:
        if entry.state != state:
            entry.state = state
            entry.last_change = wire.now()

    def _report(self, entry: Entry, result: OpResult, interval: int | None = None) -> None:
        c = self.config
        body = report(c, entry.name, entry.report_interval() if interval is None else interval,
                      result)
        log.info("report %s rc=%d %s", entry.name, result.rc, result.reason)
        if self.publish_fn is None:
            return
        try:
            self.publish_fn(c.report_key,
                            Message(body=body, subject="resource_report", opcode="report"))
        except BusError as exc:
            log.warning("report on %s not sent (re-sent after reconnect): %s", entry.name, exc)

    def _set_probes(self, entry: Entry) -> None:
        for _, job in entry.probes:
            job.cancel()
        entry.probes = []
        for probe in entry.resource.spec.probes:
            state = ProbeState(probe)
            job = self.scheduler.add(f"{entry.name}-probe-{probe.kind}", probe.interval,
                                     lambda e=entry, s=state: self._probe(e, s))
            entry.probes.append((state, job))

    def _probe(self, entry: Entry, state: ProbeState) -> None:
        if entry.state != "running":
            state.reset()
            return
        was_failing = state.failing
        state.record(check_probe(state.probe, self.reaper))
        if state.failing and not was_failing and entry.state == "running":
            self._observe(entry, OpResult(OCF_NOT_RUNNING, reason=state.reason or "probe failed"),
                          True)

    # -- persistence --------------------------------------------------------------------

    def _save(self, entry: Entry) -> None:
        spec = entry.resource.spec
        record = {"spec": {**asdict(spec), "probes": [asdict(p) for p in spec.probes]},
                  "monitors": {str(i): t for i, (_, t) in entry.monitors.items()},
                  "rc": entry.rc, "state": entry.state}
        path = os.path.join(self._specs_dir, f"{entry.name}.json")
        try:
            os.makedirs(self._specs_dir, exist_ok=True)
            with open(path + ".tmp", "w", encoding="utf-8") as f:
                json.dump(record, f)
            os.replace(path + ".tmp", path)
        except OSError as exc:
            log.warning("cannot save %s: %s", path, exc)

    def _restore(self, path: str) -> None:
        """Rebuild an entry a previous agent knew, probe it, and resume its monitors."""
        try:
            with open(path, encoding="utf-8") as f:
                record = json.load(f)
            raw = record["spec"]
            spec = ResourceSpec(name=raw["name"], cls=raw["cls"], type=raw["type"],
                                provider=raw["provider"], params=dict(raw["params"]),
                                probes=tuple(ProbeSpec(**p) for p in raw["probes"]))
            entry = self._entry_for(spec)
        except (OSError, ValueError, KeyError, TypeError, MethodError) as exc:
            log.warning("ignoring unreadable %s: %s", path, exc)
            return
        entry.rc = int(record.get("rc", OCF_NOT_RUNNING))
        entry.state = str(record.get("state", "pending"))
        monitors = {int(i): float(t) for i, t in record.get("monitors", {}).items()}
        threading.Thread(target=self._resume, args=(entry, monitors), daemon=True,
                         name=f"resume-{entry.name}").start()

    def _resume(self, entry: Entry, monitors: dict[int, float]) -> None:
        with entry.op_lock:
            timeout = max(monitors.values(), default=20.0)
            result = self._with_probes(entry, entry.resource.monitor(timeout))
            self._observe(entry, result, True, "monitor", min(monitors, default=0))
        for interval, timeout in monitors.items():
            entry.monitors[interval] = (self._schedule_monitor(entry, interval, timeout),
                                        timeout)
