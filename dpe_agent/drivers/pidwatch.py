"""Know at once when a watched process exits, child or not, through Linux pidfds.

A pidfd (``os.pidfd_open``) becomes readable when its process exits. Unlike ``waitpid`` it
works for any process we may signal, not only our children, so a DPE restarted while its
sandboxes and VMs kept running watches them just as well as the ones it started itself. One
thread polls every pidfd of one driver; callers arm and disarm watches from any thread.
"""

from __future__ import annotations

import logging
import os
import select
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)

OnExit = Callable[[str, int], None]


class PidWatch:
    """Calls ``on_exit(key, pid)`` from its own thread when a watched process exits.

    A disarmed watch never calls back, so a driver disarms before it kills on purpose and only
    deaths it did not cause are reported.
    """

    def __init__(self, on_exit: OnExit, name: str = "pidwatch") -> None:
        self._on_exit = on_exit
        self._name = name
        self._lock = threading.Lock()
        self._by_key: dict[str, tuple[int, int]] = {}      # key -> (pidfd, pid)
        self._by_fd: dict[int, str] = {}
        self._closing: list[int] = []     # disarmed pidfds: only the poll thread closes them,
        #                                   so no fd number is reused while it polls
        self._poll = select.poll()
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._poll.register(self._wake_r, select.POLLIN)
        self._thread: threading.Thread | None = None

    def arm(self, key: str, pid: int) -> bool:
        """Watch ``pid`` under ``key`` (replacing an earlier watch of that key); False when the
        process is already gone (the caller then knows its death at once)."""
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:
            return False
        with self._lock:
            self._drop(key)
            self._by_key[key] = (fd, pid)
            self._by_fd[fd] = key
            self._poll.register(fd, select.POLLIN)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()
        self._wake()
        return True

    def disarm(self, key: str) -> None:
        """Stop watching ``key``: its exit, even one already under way, is not reported."""
        with self._lock:
            self._drop(key)

    def watched(self, key: str) -> int | None:
        """The pid watched under ``key``, or None."""
        with self._lock:
            entry = self._by_key.get(key)
        return entry[1] if entry else None

    def _drop(self, key: str) -> None:
        entry = self._by_key.pop(key, None)
        if entry is not None:
            del self._by_fd[entry[0]]
            self._closing.append(entry[0])
            self._wake()

    def _close_dropped(self) -> None:
        with self._lock:
            for fd in self._closing:
                self._poll.unregister(fd)
                os.close(fd)
            self._closing.clear()

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"x")
        except BlockingIOError:
            pass                              # a wake-up is already pending

    def _run(self) -> None:
        while True:
            self._close_dropped()
            for fd, _ in self._poll.poll():
                if fd == self._wake_r:
                    while True:
                        try:
                            os.read(self._wake_r, 512)
                        except BlockingIOError:
                            break
                    continue
                with self._lock:
                    key = self._by_fd.get(fd)
                    if key is None:
                        continue                  # disarmed meanwhile
                    pid = self._by_key[key][1]
                    self._drop(key)
                try:
                    self._on_exit(key, pid)
                except Exception:
                    log.exception("exit of pid %d (%s) not handled", pid, key)
