"""Recurring work inside the agent: resource monitors and liveness probes.

One scheduler thread keeps a heap of due jobs and hands each to a small worker pool, so a
slow OCF monitor never delays another resource's monitor or a sub-second probe. A job is
never run twice at once; a late job is rescheduled from now (no burst of catch-up runs).
"""

from __future__ import annotations

import heapq
import http.client
import itertools
import logging
import os
import socket
import ssl
import threading
import time
import urllib.parse
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from guest_agent.reaper import Reaper
from guest_agent.resources.base import ProbeSpec, exit_code, run_command

log = logging.getLogger(__name__)


class Job:
    """A recurring callable; cancel() stops it for good."""

    def __init__(self, name: str, interval: float, fn: Callable[[], None]) -> None:
        self.name = name
        self.interval = interval
        self.fn = fn
        self.cancelled = False
        self.running = False

    def cancel(self) -> None:
        self.cancelled = True


class Scheduler:
    """Runs jobs every ``interval`` seconds on a worker pool."""

    def __init__(self, workers: int = 6) -> None:
        self._heap: list[tuple[float, int, Job]] = []
        self._counter = itertools.count()
        self._cond = threading.Condition()
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="monitor")
        self._stopped = False
        threading.Thread(target=self._loop, name="scheduler", daemon=True).start()

    def add(self, name: str, interval: float, fn: Callable[[], None],
            first_delay: float | None = None) -> Job:
        """Schedule fn every interval seconds, first after first_delay (default: interval)."""
        job = Job(name, interval, fn)
        self._push(job, time.monotonic() + (interval if first_delay is None else first_delay))
        return job

    def run_soon(self, fn: Callable[[], None]) -> None:
        """Run fn once on the pool, now (an out-of-turn monitor)."""
        try:
            self._pool.submit(fn)
        except RuntimeError:
            pass

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _push(self, job: Job, due: float) -> None:
        with self._cond:
            heapq.heappush(self._heap, (due, next(self._counter), job))
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
            try:
                self._pool.submit(self._run, job, due)
            except RuntimeError:
                return

    def _run(self, job: Job, due: float) -> None:
        try:
            if not job.cancelled:
                job.fn()
        except Exception:
            log.exception("recurring job %s failed", job.name)
        finally:
            job.running = False
            if not job.cancelled:
                now = time.monotonic()
                nxt = due + job.interval
                self._push(job, nxt if nxt > now else now + job.interval)


def check_probe(probe: ProbeSpec, reaper: Reaper) -> str | None:
    """Run one probe; None when healthy, else why not (a short sentence)."""
    try:
        if probe.kind == "http":
            return _http(probe)
        if probe.kind == "tcp":
            return _tcp(probe)
        if probe.kind == "exec":
            return _exec(probe, reaper)
    except (OSError, http.client.HTTPException, ValueError) as exc:
        return f"{probe.kind} probe {probe.target} failed: {exc or type(exc).__name__}"
    return f"unknown probe kind {probe.kind!r}"


def _http(probe: ProbeSpec) -> str | None:
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
