"""A bounded worker pool with ordered lanes: how ``Bus.serve`` runs method handlers.

Each served queue gets its own pool, so a slow handler never holds up another queue or the
subscriptions, and a handler may call methods served by the same Bus. Items submitted with
the same key run one at a time, in submission order; items with different keys, or with no
key, run concurrently on up to ``workers`` threads. Threads start on demand, are daemons (a
handler stuck in a long operation never blocks interpreter exit) and end on ``shutdown``.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable, Hashable

log = logging.getLogger("pcloud.bus")

Work = Callable[[], None]


class Lanes:
    """Run callables on at most ``workers`` threads, serialised per key."""

    def __init__(self, name: str, workers: int = 1) -> None:
        if workers < 1:
            raise ValueError(f"workers must be at least 1, not {workers}")
        self.name = name
        self.workers = workers
        self._cond = threading.Condition()
        self._ready: deque[tuple[Hashable | None, Work]] = deque()
        self._lanes: dict[Hashable, deque[Work]] = {}
        self._threads: list[threading.Thread] = []
        self._idle = 0
        self._closed = False

    def submit(self, key: Hashable | None, work: Work) -> bool:
        """Queue ``work``; False (and nothing queued) once the pool is shut down."""
        with self._cond:
            if self._closed:
                return False
            if key is not None:
                lane = self._lanes.get(key)
                if lane is not None:
                    lane.append(work)
                    return True
                self._lanes[key] = deque()
            self._ready.append((key, work))
            self._wake_one()
            return True

    def _wake_one(self) -> None:
        """Hand the new ready item to an idle thread, or start one (lock held)."""
        if self._idle:
            self._idle -= 1
            self._cond.notify()
        elif len(self._threads) < self.workers:
            thread = threading.Thread(target=self._run, daemon=True,
                                      name=f"bus-serve-{self.name}-{len(self._threads) + 1}")
            self._threads.append(thread)
            thread.start()

    def shutdown(self, cancel_pending: bool = False, timeout: float = 0.0) -> None:
        """Accept no more work; drop queued work if asked; wait up to ``timeout`` for the
        threads (running work always completes, as a handler cannot be interrupted)."""
        with self._cond:
            self._closed = True
            if cancel_pending:
                dropped = len(self._ready) + sum(len(lane) for lane in self._lanes.values())
                if dropped:
                    log.info("bus pool %s: dropping %d queued requests", self.name, dropped)
                self._ready.clear()
                self._lanes = {key: deque() for key in self._lanes}
            self._cond.notify_all()
            threads = list(self._threads)
        if timeout <= 0:
            return
        current = threading.current_thread()
        for thread in threads:
            if thread is not current:
                thread.join(timeout)
                if thread.is_alive():
                    log.warning("bus pool %s: a handler is still running after %.1f s",
                                self.name, timeout)
                    return

    def _next(self) -> tuple[Hashable | None, Work] | None:
        with self._cond:
            while not self._ready:
                if self._closed:
                    return None
                self._idle += 1
                self._cond.wait()
            return self._ready.popleft()

    def _run(self) -> None:
        while (item := self._next()) is not None:
            key, work = item
            try:
                work()
            except Exception:
                log.exception("bus pool %s: work item failed", self.name)
            if key is not None:
                self._release(key)

    def _release(self, key: Hashable) -> None:
        """The lane's running item finished: its next item becomes ready, or the lane ends."""
        with self._cond:
            lane = self._lanes.get(key)
            if lane:
                self._ready.append((key, lane.popleft()))
            else:
                self._lanes.pop(key, None)
