"""Recurring work inside the agent: heartbeats, resource monitors and liveness probes.

One scheduler thread keeps a heap of due jobs. Quick jobs (a heartbeat, a ``process``
resource's monitor, which reads /proc) run on that thread itself; the others (an OCF agent's
fork, a probe's connect) go to a few workers, so a slow OCF monitor never delays another
resource's monitor or a sub-second probe. Workers start on demand and end after
``WORKER_IDLE`` seconds without work, so an idle agent holds one thread for all its timers.
A job is never run twice at once; a late job skips the runs it missed (no burst of catch-up
runs).

Every wake-up of an idle agent costs CPU (about 0.15 ms on a busy 2-core host, more than the
work it wakes for), so jobs whose interval is a whole number of seconds run on one grid of
whole seconds: the heartbeat and every such monitor share a wake-up. A job's first run is
moved *earlier* to the grid (never later, so no failure is seen later than its interval).
"""

from __future__ import annotations

import heapq
import itertools
import logging
import os
import socket
import threading
import time
from collections import deque
from collections.abc import Callable

from guest_agent.reaper import Reaper
from guest_agent.resources.base import ProbeSpec, exit_code, run_command

log = logging.getLogger(__name__)

WORKER_IDLE = 30.0
GRID = 1.0


def grid_due(due: float, interval: float, origin: float, now: float) -> float:
    """``due`` moved back onto the grid of ``GRID`` seconds from ``origin`` when the
    interval is a whole number of grid steps (and the moved time is not in the past)."""
    steps = interval / GRID
    if steps < 1 or steps != int(steps):
        return due
    snapped = origin + ((due - origin) // GRID) * GRID
    return snapped if snapped >= now else due


def next_due(due: float, interval: float, now: float) -> float:
    """The first time after ``now`` on the job's own schedule (missed runs are skipped)."""
    nxt = due + interval
    if nxt <= now:
        nxt += ((now - nxt) // interval + 1) * interval
    return nxt


class Job:
    """A recurring callable; cancel() stops it for good."""

    def __init__(self, name: str, interval: float, fn: Callable[[], None],
                 inline: bool = False, once: bool = False) -> None:
        self.name = name
        self.interval = interval
        self.fn = fn
        self.inline = inline
        self.once = once
        self.cancelled = False
        self.running = False

    def cancel(self) -> None:
        self.cancelled = True


class Workers:
    """At most ``limit`` threads that run submitted callables and end when idle."""

    def __init__(self, limit: int, idle: float = WORKER_IDLE) -> None:
        self._limit = limit
        self._idle_timeout = idle
        self._cond = threading.Condition()
        self._work: deque[Callable[[], None]] = deque()
        self._threads = 0
        self._idle = 0
        self._stopped = False

    def submit(self, fn: Callable[[], None]) -> bool:
        """Queue fn; False once stopped."""
        with self._cond:
            if self._stopped:
                return False
            self._work.append(fn)
            if self._idle > len(self._work) - 1:
                self._cond.notify()
            elif self._threads < self._limit:
                self._threads += 1
                threading.Thread(target=self._run, name="monitor", daemon=True).start()
            return True

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._work.clear()
            self._cond.notify_all()

    def _run(self) -> None:
        while True:
            with self._cond:
                self._idle += 1
                deadline = time.monotonic() + self._idle_timeout
                while not self._work and not self._stopped:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._cond.wait(left)
                self._idle -= 1
                if not self._work:
                    self._threads -= 1
                    return
                fn = self._work.popleft()
            try:
                fn()
            except Exception:
                log.exception("monitor work failed")


class Scheduler:
    """Runs jobs every ``interval`` seconds: quick ones on its thread, others on workers."""

    def __init__(self, workers: int = 6) -> None:
        self._heap: list[tuple[float, int, Job]] = []
        self._counter = itertools.count()
        self._cond = threading.Condition()
        self._workers = Workers(workers)
        self._stopped = False
        self._origin = time.monotonic()
        threading.Thread(target=self._loop, name="scheduler", daemon=True).start()

    def add(self, name: str, interval: float, fn: Callable[[], None],
            first_delay: float | None = None, inline: bool = False) -> Job:
        """Schedule fn every interval seconds, first after first_delay (default: interval).

        ``inline``: fn is quick and never blocks (it runs on the scheduler's own thread).
        """
        job = Job(name, interval, fn, inline)
        now = time.monotonic()
        due = now + (interval if first_delay is None else first_delay)
        self._push(job, grid_due(due, interval, self._origin, now))
        return job

    def once(self, name: str, delay: float, fn: Callable[[], None]) -> Job:
        """Run a quick fn once, delay seconds from now, on the scheduler's thread."""
        job = Job(name, delay, fn, inline=True, once=True)
        self._push(job, time.monotonic() + delay)
        return job

    def run_soon(self, fn: Callable[[], None]) -> None:
        """Run fn once on a worker, now (an out-of-turn monitor)."""
        self._workers.submit(fn)

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
        self._workers.stop()

    def _push(self, job: Job, due: float) -> None:
        with self._cond:
            heapq.heappush(self._heap, (due, next(self._counter), job))
            if self._heap[0][2] is job:
                self._cond.notify_all()

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._stopped and (
                        not self._heap or self._heap[0][0] > time.monotonic()):
                    timeout = self._heap[0][0] - time.monotonic() if self._heap else None
                    self._cond.wait(timeout)
                if self._stopped:
                    return
                due, _, job = heapq.heappop(self._heap)
            if job.cancelled:
                continue
            job.running = True
            if job.inline:
                self._run(job, due)
            elif not self._workers.submit(lambda j=job, d=due: self._run(j, d)):
                return

    def _run(self, job: Job, due: float) -> None:
        try:
            if not job.cancelled:
                job.fn()
        except Exception:
            log.exception("recurring job %s failed", job.name)
        finally:
            job.running = False
            if not job.cancelled and not job.once:
                now = time.monotonic()
                nxt = next_due(due, job.interval, now)
                self._push(job, grid_due(nxt, job.interval, self._origin, now))


def check_probe(probe: ProbeSpec, reaper: Reaper) -> str | None:
    """Run one probe; None when healthy, else why not (a short sentence)."""
    try:
        if probe.kind == "http":
            return _http(probe)
        if probe.kind == "tcp":
            return _tcp(probe)
        if probe.kind == "exec":
            return _exec(probe, reaper)
    except (OSError, ValueError) as exc:
        return f"{probe.kind} probe {probe.target} failed: {exc or type(exc).__name__}"
    return f"unknown probe kind {probe.kind!r}"


def _http(probe: ProbeSpec) -> str | None:
    # imported here: http.client brings email and ssl, megabytes an agent without http
    # probes never needs
    import http.client
    import ssl
    import urllib.parse

    url = urllib.parse.urlsplit(probe.target)
    path = (url.path or "/") + (f"?{url.query}" if url.query else "")
    if url.scheme == "https":
        conn: http.client.HTTPConnection = http.client.HTTPSConnection(
            url.hostname or "127.0.0.1", url.port, timeout=probe.timeout,
            context=ssl._create_unverified_context())
    else:
        conn = http.client.HTTPConnection(url.hostname or "127.0.0.1", url.port,
                                          timeout=probe.timeout)
    try:
        conn.request("GET", path, headers={"User-Agent": "pcloud-agent"})
        status = conn.getresponse().status
    except http.client.HTTPException as exc:
        return f"http probe {probe.target} failed: {exc or type(exc).__name__}"
    finally:
        conn.close()
    if probe.expect_status is not None:
        ok = status == probe.expect_status
    else:
        ok = 200 <= status < 400
    return None if ok else f"http probe {probe.target} answered {status}"


def _tcp(probe: ProbeSpec) -> str | None:
    host, _, port = probe.target.rpartition(":")
    with socket.create_connection((host or "127.0.0.1", int(port)), timeout=probe.timeout):
        return None


def _exec(probe: ProbeSpec, reaper: Reaper) -> str | None:
    status, output, _ = run_command(reaper, ["/bin/sh", "-c", probe.target],
                                    _probe_env(), probe.timeout, "/")
    if status is None:
        return f"exec probe timed out after {probe.timeout:g}s"
    code = exit_code(status)
    if code == 0:
        return None
    tail = output.strip().splitlines()[-1][:200] if output.strip() else ""
    what = f"status {code}" if code is not None else "a signal"
    return f"exec probe exited with {what}" + (f": {tail}" if tail else "")


def _probe_env() -> dict[str, str]:
    return dict(os.environ)


class ProbeState:
    """Consecutive failures of one probe; failing only after ``failures`` in a row, and only
    once the service answered once or the start grace period is over (a service that is still
    binding its port is not dead)."""

    def __init__(self, probe: ProbeSpec) -> None:
        self.probe = probe
        self.reset()

    def reset(self) -> None:
        self.since = time.monotonic()
        self.succeeded = False
        self.consecutive = 0
        self.reason: str | None = None

    def record(self, reason: str | None) -> None:
        if reason is None:
            self.succeeded = True
            self.consecutive = 0
            self.reason = None
        else:
            self.consecutive += 1
            self.reason = reason

    @property
    def failing(self) -> bool:
        in_grace = not self.succeeded and time.monotonic() - self.since < self.probe.grace
        return self.consecutive >= self.probe.failures and not in_grace
