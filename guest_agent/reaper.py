"""Child reaping and exit notification without polling.

The agent must see a resource's death at once, also when the resource daemonized (double
fork) and its orphan was re-parented. So the agent is PID 1 of its sandbox or a child
subreaper, and one thread blocks in ``waitid(P_ALL, WEXITED | WNOWAIT)`` and reaps every
zombie as soon as it appears. All child processes of the agent must be spawned through
:meth:`Reaper.spawn` (never ``subprocess.run``), so exit statuses are not stolen.

Processes that are not descendants (adopted after an agent restart) are watched through a
pidfd, which becomes readable when the process exits.
"""

from __future__ import annotations

import ctypes
import logging
import os
import select
import subprocess
import threading
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

PR_SET_CHILD_SUBREAPER = 36
_UNCLAIMED_TTL = 60.0
ORPHAN_CHECK = 10.0

ExitCallback = Callable[[int, int | None], None]
"""Called with (pid, wait status or None when unknown) on the reaper thread."""


def become_subreaper(enable: bool = True) -> bool:
    """Mark this process a child subreaper so orphaned descendants become our children."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_CHILD_SUBREAPER, int(enable), 0, 0, 0) != 0:
            log.warning("prctl(PR_SET_CHILD_SUBREAPER) failed: %s",
                        os.strerror(ctypes.get_errno()))
            return False
    except (OSError, AttributeError) as exc:
        log.warning("prctl unavailable: %s", exc)
        return False
    return True


def describe_status(status: int | None) -> str:
    """Human-readable exit, as in reports: 'exited with status 3', 'exited with signal 9'."""
    if status is None:
        return "process exited"
    if os.WIFSIGNALED(status):
        return f"process exited with signal {os.WTERMSIG(status)}"
    return f"process exited with status {os.waitstatus_to_exitcode(status)}"


def proc_start_time(pid: int) -> int | None:
    """The start time of a process (clock ticks since boot), to tell a pid reused."""
    stat = _proc_stat(pid)
    return int(stat[19]) if stat else None


def proc_alive(pid: int, start_time: int | None = None) -> bool:
    """True when pid runs (not a zombie) and, if given, started at start_time."""
    stat = _proc_stat(pid)
    if stat is None or stat[0] in ("Z", "X"):
        return False
    return start_time is None or int(stat[19]) == start_time


def _proc_ppid(pid: int) -> int | None:
    stat = _proc_stat(pid)
    return int(stat[1]) if stat else None


def _proc_stat(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name (index 0 is the state)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            data = f.read()
    except OSError:
        return None
    return data[data.rfind(")") + 2:].split()


class Child:
    """A process spawned through the reaper; its exit status arrives from the reaper thread."""

    def __init__(self, proc: subprocess.Popen, on_exit: ExitCallback | None) -> None:
        self.proc = proc
        self.pid = proc.pid
        self.status: int | None = None
        self.exited = threading.Event()
        self._on_exit = on_exit

    def wait(self, timeout: float | None) -> int | None:
        """The wait status, or None if the child still runs after timeout seconds."""
        if not self.exited.wait(timeout):
            return None
        return self.status

    def _exit(self, pid: int, status: int | None) -> None:
        self.status = status
        self.proc.returncode = os.waitstatus_to_exitcode(status) if status is not None else -1
        self.exited.set()
        if self._on_exit is not None:
            self._on_exit(pid, status)


class Reaper:
    """Reaps all children at once and dispatches exits to watchers."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._have_children = threading.Condition(self._lock)
        self._watchers: dict[int, ExitCallback] = {}
        self._unclaimed: dict[int, tuple[int, float]] = {}
        self._pidfds: dict[int, int] = {}
        self._fd_pids: dict[int, int] = {}
        self._orphan_callbacks: list[Callable[[int], None]] = []
        self._epoll = select.epoll()
        self._waker = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        self._epoll.register(self._waker, select.EPOLLIN)
        self._spawned = 0
        self._started = False
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._pidwatch: threading.Thread | None = None

    def start(self) -> None:
        """Start the reaping thread (idempotent); the pidfd thread starts with the first
        stranger watched (after an agent restart), so most agents never run one."""
        if self._started:
            return
        self._started = True
        self._threads = [threading.Thread(target=self._reap_loop, name="reaper", daemon=True)]
        self._threads[0].start()
        with self._lock:
            self._ensure_pidwatch()

    def stop(self) -> None:
        """Stop both threads, so the process gets its children's exit statuses back.

        The agent never stops its reaper; a process that only borrows one (a test run) must,
        or the reaper goes on collecting the statuses of children it never started.
        """
        self._stopping.set()
        with self._lock:
            self._have_children.notify_all()
        os.eventfd_write(self._waker, 1)       # ends the pidfd thread's poll
        waker = subprocess.Popen(["true"])     # ends the blocking waitid
        for thread in self._threads:
            thread.join(timeout=5.0)
        waker.wait()
        self._epoll.close()
        os.close(self._waker)

    def on_orphan_exit(self, callback: Callable[[int], None]) -> None:
        """Call back when a process nobody watches dies (e.g. a daemon an OCF agent started)."""
        self._orphan_callbacks.append(callback)

    def spawn(self, argv: list[str], on_exit: ExitCallback | None = None,
              **popen_kwargs: Any) -> Child:
        """Start a child watched from birth; Popen.wait must never be used on it."""
        with self._lock:
            proc = subprocess.Popen(argv, **popen_kwargs)
            self._spawned += 1
            child = Child(proc, on_exit)
            self._watchers[proc.pid] = child._exit
            self._have_children.notify_all()
        return child

    def watch(self, pid: int, callback: ExitCallback) -> None:
        """Call callback once when pid exits (a re-parented orphan or a stranger)."""
        with self._lock:
            if pid in self._unclaimed:
                status: int | None = self._unclaimed.pop(pid)[0]
            elif _proc_ppid(pid) == os.getpid() or self._add_pidfd(pid):
                self._watchers[pid] = callback
                return
            else:
                status = None
        self._safe(callback, pid, status)

    def unwatch(self, pid: int) -> None:
        """Forget a watcher (the caller no longer cares about that pid)."""
        with self._lock:
            self._watchers.pop(pid, None)
            self._drop_pidfd(pid)

    def _add_pidfd(self, pid: int) -> bool:
        try:
            fd = os.pidfd_open(pid)
        except OSError:
            return False
        self._pidfds[pid] = fd
        self._fd_pids[fd] = pid
        self._epoll.register(fd, select.EPOLLIN)
        self._ensure_pidwatch()
        return True

    def _ensure_pidwatch(self) -> None:
        if self._pidwatch is None and self._started and self._pidfds:
            self._pidwatch = threading.Thread(target=self._pidfd_loop, name="pidwatch",
                                              daemon=True)
            self._threads.append(self._pidwatch)
            self._pidwatch.start()

    def _drop_pidfd(self, pid: int) -> None:
        fd = self._pidfds.pop(pid, None)
        if fd is not None:
            del self._fd_pids[fd]
            self._epoll.unregister(fd)
            os.close(fd)

    def _reap_loop(self) -> None:
        while not self._stopping.is_set():
            with self._lock:
                spawned = self._spawned
            try:
                os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOWAIT)
            except ChildProcessError:
                # No child, so no descendant of ours to be re-parented to us: a spawn wakes
                # this at once. Only a stranger's orphan (a process someone entered into our
                # PID namespace) can appear otherwise; it is looked for every ORPHAN_CHECK s.
                with self._lock:
                    if self._spawned == spawned and not self._stopping.is_set():
                        self._have_children.wait(ORPHAN_CHECK)
                continue
            except InterruptedError:
                continue
            if self._stopping.is_set():
                return
            self._reap_all()

    def _reap_all(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            self._dispatch(pid, status)

    def _dispatch(self, pid: int, status: int | None) -> None:
        with self._lock:
            callback = self._watchers.pop(pid, None)
            self._drop_pidfd(pid)
            if callback is None:
                now = time.monotonic()
                self._unclaimed[pid] = (status or 0, now)
                for old in [p for p, (_, t) in self._unclaimed.items() if now - t > _UNCLAIMED_TTL]:
                    del self._unclaimed[old]
        if callback is not None:
            self._safe(callback, pid, status)
        else:
            for orphan_cb in list(self._orphan_callbacks):
                self._safe(orphan_cb, pid)

    @staticmethod
    def _safe(fn: Callable[..., None], *args: Any) -> None:
        try:
            fn(*args)
        except Exception:
            log.exception("exit callback failed")

    def _pidfd_loop(self) -> None:
        while not self._stopping.is_set():
            for fd, _ in self._epoll.poll():
                if fd != self._waker:
                    self._pidfd_ready(fd)

    def _pidfd_ready(self, fd: int) -> None:
        with self._lock:
            pid = self._fd_pids.get(fd)
            if pid is None:
                return
            self._drop_pidfd(pid)
            if _proc_ppid(pid) == os.getpid():
                return
            callback = self._watchers.pop(pid, None)
        if callback is not None:
            self._safe(callback, pid, None)


_shared: Reaper | None = None
_shared_lock = threading.Lock()


def shared() -> Reaper:
    """The process's one reaper, started: two would steal each other's exit statuses."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = Reaper()
            _shared.start()
        return _shared


def stop_shared() -> None:
    """Stop the process's reaper, if one runs (a borrowing process is done with it)."""
    global _shared
    with _shared_lock:
        if _shared is not None:
            _shared.stop()
            _shared = None
