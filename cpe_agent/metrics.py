"""Prometheus metrics of the CPE, derived from what it already sees (docs/integration.md).

Counters and the MTTR histogram follow the events the CPE stores (each once per
(deployable, seq), back-filled ones included), component states follow the same events
(seeded from each deployable's last stored status), and the rest is read from the store and
the supervisor at scrape time. Off by default: ``[metrics] listen = 127.0.0.1:9464``.

``count(event)`` is a pure function of one event's attributes, so what counts as a failure,
a restart, a fencing or an escalation is tested without a broker.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

from lxml import etree
from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from cpe_agent.store import Store
from cpe_agent.supervisor import DpeWatch
from pcloud import xmlsafe

log = logging.getLogger("pcloud.cpe.metrics")

LEVELS = ("deployable", "assembly", "resource")
# Seconds: a process resource recovers in well under a second, a VM in about 15 s.
DELAY_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0)
MTTR_BUCKETS = (0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 15.0, 30.0, 60.0, 120.0, 300.0,
                600.0)


@dataclass(frozen=True)
class Counted:
    """What one event adds to the counters."""

    failure: str | None = None       # level that failed
    restart: str | None = None       # level restarted
    fencing: bool = False
    escalated_to: str | None = None  # "assembly", "deployable" or "none" (gave up)
    mttr: float | None = None        # seconds of a closed incident


def level_of(event: Mapping[str, str]) -> str:
    if event.get("resource", "-") not in ("", "-"):
        return "resource"
    if event.get("assembly", "-") not in ("", "-"):
        return "assembly"
    return "deployable"


def count(event: Mapping[str, str]) -> Counted:
    """The counters an event moves. A restart is a change to ``restarting``, or to
    ``starting`` straight from ``failed`` (a dead process is started again without a stop);
    ``restarting`` → ``starting`` is the same restart."""
    kind, state, previous = event.get("type", ""), event.get("state"), event.get("previous")
    if kind == "fencing":
        return Counted(fencing=True)
    if kind == "escalation":
        return Counted(escalated_to=event.get("escalated_to") or "none")
    if not kind.endswith("_state_change"):
        return Counted()
    level = level_of(event)
    mttr = None
    duration = event.get("duration_ms")
    if state == "running" and duration is not None:
        try:
            mttr = max(0.0, float(duration) / 1000.0)
        except ValueError:
            mttr = None
    restarted = state == "restarting" or (state == "starting" and previous == "failed")
    return Counted(failure=level if state == "failed" else None,
                   restart=level if restarted else None, mttr=mttr)


class CpeMetrics:
    """The CPE's registry; ``observe`` takes every newly stored event."""

    def __init__(self, store: Store, dpes: Callable[[], list[DpeWatch]],
                 bus_connected: Callable[[], bool]) -> None:
        self.store = store
        self.registry = CollectorRegistry(auto_describe=True)
        labels = ["deployable", "level"]
        self.failures = Counter("pcloud_failures", "Components that went failed",
                                labels, registry=self.registry)
        self.restarts = Counter("pcloud_restarts", "Components restarted after a failure",
                                labels, registry=self.registry)
        self.fencings = Counter("pcloud_fencings", "Assemblies fenced (forced off)",
                                ["deployable"], registry=self.registry)
        self.escalations = Counter("pcloud_escalations", "Failures that escalated a level",
                                   ["deployable", "escalated_to"], registry=self.registry)
        self.mttr = Histogram("pcloud_mttr_seconds", "Incident detection to running again",
                              ["deployable"], buckets=MTTR_BUCKETS, registry=self.registry)
        self.heartbeat_delay = Histogram(
            "pcloud_dpe_heartbeat_delay_seconds", "How much later than its interval each DPE "
            "heartbeat arrived after the previous one (0: on time)", ["deployable"],
            buckets=DELAY_BUCKETS, registry=self.registry)
        self._states: dict[tuple[str, str, str], str] = {}   # (dep, asm, rsc) -> state
        self._lock = threading.Lock()
        self.registry.register(_Snapshot(self, dpes, bus_connected))
        self._seed()

    def _seed(self) -> None:
        """Component states from each deployable's last status, until events come."""
        for stored in self.store.list():
            if not stored.last_status:
                continue
            try:
                root = xmlsafe.parse(stored.last_status, source="last status")
            except xmlsafe.XMLError:
                continue
            for assembly in root.iter("assembly"):
                asm = assembly.get("name", "")
                self._states[(stored.name, asm, "-")] = assembly.get("state", "")
                for resource in assembly.iter("resource"):
                    self._states[(stored.name, asm, resource.get("name", ""))] = \
                        resource.get("state", "")

    def observe(self, root: etree._Element) -> None:
        """One newly stored event (the service's listener; any thread)."""
        event = dict(root.attrib)
        name = event.get("deployable", "")
        counted = count(event)
        if counted.failure:
            self.failures.labels(name, counted.failure).inc()
        if counted.restart:
            self.restarts.labels(name, counted.restart).inc()
        if counted.fencing:
            self.fencings.labels(name).inc()
        if counted.escalated_to:
            self.escalations.labels(name, counted.escalated_to).inc()
        if counted.mttr is not None:
            self.mttr.labels(name).observe(counted.mttr)
        state = event.get("state")
        level = level_of(event)
        if state and event.get("type", "").endswith("_state_change") and level != "deployable":
            with self._lock:
                self._states[(name, event.get("assembly", "-"), event.get("resource", "-"))] \
                    = state

    def heartbeat_gap(self, name: str, late: float) -> None:
        """A DPE heartbeat arrived ``late`` seconds after its interval (the supervisor's
        callback; early ones count as on time)."""
        self.heartbeat_delay.labels(name).observe(max(0.0, late))

    def component_states(self, names: set[str]) -> dict[tuple[str, str, str], int]:
        """(deployable, level, state) -> how many, for the stored deployables only."""
        with self._lock:
            items = list(self._states.items())
        counts: dict[tuple[str, str, str], int] = {}
        for (dep, _asm, rsc), state in items:
            if dep in names:
                key = (dep, "assembly" if rsc == "-" else "resource", state)
                counts[key] = counts.get(key, 0) + 1
        return counts


class _Snapshot(Collector):
    """Gauges read at scrape time: states, DPE restarts and heartbeats, the bus."""

    def __init__(self, metrics: CpeMetrics, dpes: Callable[[], list[DpeWatch]],
                 bus_connected: Callable[[], bool]) -> None:
        self.metrics = metrics
        self.dpes = dpes
        self.bus_connected = bus_connected

    def collect(self) -> Iterator[Metric]:
        stored = self.metrics.store.list()
        deployables = GaugeMetricFamily("pcloud_deployables", "Deployables by state",
                                        labels=["state"])
        by_state: dict[str, int] = {}
        for item in stored:
            by_state[item.state] = by_state.get(item.state, 0) + 1
        for state, number in sorted(by_state.items()):
            deployables.add_metric([state], number)
        yield deployables
        components = {level: GaugeMetricFamily(f"pcloud_{plural}", f"{plural.title()} by state",
                                               labels=["deployable", "state"])
                      for level, plural in (("assembly", "assemblies"),
                                            ("resource", "resources"))}
        counts = self.metrics.component_states({item.name for item in stored})
        for (dep, level, state), number in sorted(counts.items()):
            components[level].add_metric([dep, state], number)
        yield from components.values()
        restarts = CounterMetricFamily("pcloud_dpe_restarts", "DPEs started again after "
                                       "one died or went silent (since this CPE started)",
                                       labels=["deployable"])
        lateness = GaugeMetricFamily("pcloud_dpe_heartbeat_lateness_seconds",
                                     "How far past its interval a DPE's heartbeat is now",
                                     labels=["deployable"])
        up = GaugeMetricFamily("pcloud_dpe_up", "Whether the DPE process runs",
                               labels=["deployable"])
        for sample in self.dpes():
            restarts.add_metric([sample.deployable], sample.revived)
            up.add_metric([sample.deployable], 1.0 if sample.alive else 0.0)
            if sample.heartbeat_age is not None:
                late = max(0.0, sample.heartbeat_age - sample.heartbeat_interval)
                lateness.add_metric([sample.deployable], round(late, 3))
        yield from (restarts, lateness, up)
        yield GaugeMetricFamily("pcloud_bus_connected", "Whether the CPE's broker connection "
                                "is up", value=1.0 if self.bus_connected() else 0.0)


class MetricsServer:
    """The registry on ``http://host:port/metrics`` (prometheus_client's own server)."""

    def __init__(self, metrics: CpeMetrics, host: str, port: int) -> None:
        self.metrics = metrics
        self.server, self._thread = start_http_server(port, addr=host,
                                                      registry=metrics.registry)
        self.port = self.server.server_port
        log.info("metrics on http://%s:%d/metrics", host, self.port)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=5.0)
