"""``process`` resources: the agent runs the command itself and sees its exit at once.

The command runs in its own session (so its own process group), with output appended to
``<state>/logs/<name>.log``. Its exit reaches the agent from the reaper thread the moment it
happens (no polling). A daemonizing command names its ``pidfile``; the daemon is re-parented
to the agent (subreaper) and watched the same way.

The pid, its start time and the process group are kept in ``<state>/resources/<name>.json``,
so a restarted agent re-adopts a process that still runs (watched through a pidfd) and never
mistakes a reused pid for it.

Parameters ``user`` (and ``group``) run the command as that account rather than as the agent
(root), so a service does not hold the host: its uid and gid, no supplementary groups, and
``HOME``/``USER``/``LOGNAME`` set as a login would (``cwd`` defaults to that home, or ``/``).
It stays the agent's child in the agent's session tree, so its exit is seen at once and it
dies with the sandbox like any other resource. A daemon's pidfile must then name a process of
that user: the user can write the file, and must not point the agent at someone else's pid.
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import shlex
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from typing import Any

from guest_agent.reaper import Reaper, describe_status, proc_alive, proc_start_time
from guest_agent.resources.base import (
    OCF_ERR_CONFIGURED,
    OCF_ERR_GENERIC,
    OCF_ERR_INSTALLED,
    OCF_ERR_PERM,
    OCF_NOT_RUNNING,
    OCF_SUCCESS,
    OpResult,
    Resource,
    ResourceError,
    ResourceSpec,
    kill_group,
    read_tail,
)

_TRUE = ("1", "true", "yes", "on")


def parse_environment(params: dict[str, str]) -> dict[str, str]:
    """Variables from ``env_NAME`` parameters and an ``environment`` ("A=1 B='x y'") one."""
    env: dict[str, str] = {}
    try:
        words = shlex.split(params.get("environment", ""))
    except ValueError as exc:
        raise ResourceError("invalid_parameter", f"environment: {exc}") from None
    for word in words:
        key, sep, value = word.partition("=")
        if not sep or not key.isidentifier():
            raise ResourceError("invalid_parameter",
                                f"environment entry {word!r} is not NAME=value")
        env[key] = value
    for key, value in params.items():
        if key.startswith("env_") and len(key) > 4:
            env[key[4:]] = value
    return env


@dataclass(frozen=True)
class RunAs:
    """The account a process resource runs as."""

    user: str
    uid: int
    gid: int
    home: str

    def environment(self) -> dict[str, str]:
        """What a login would set; explicit ``env_*`` parameters still win."""
        return {"HOME": self.home, "USER": self.user, "LOGNAME": self.user}

    def spawn_kwargs(self) -> dict[str, Any]:
        """Popen arguments that switch to the account; ``extra_groups=[]`` drops root's
        supplementary groups, which ``user=`` alone would keep."""
        if os.geteuid() == 0:
            return {"user": self.uid, "group": self.gid, "extra_groups": []}
        return {}

    def startable(self) -> str | None:
        """Why this agent cannot switch to the account (None: it can)."""
        if os.geteuid() == 0 or (self.uid, self.gid) == (os.geteuid(), os.getegid()):
            return None
        return (f"the agent runs as uid {os.geteuid()}, not root: it cannot start a process "
                f"as user {self.user}")


def run_as(params: dict[str, str]) -> RunAs | None:
    """The account named by ``user``/``group``; ``invalid_parameter`` when it does not exist
    here (a typo must not fall back to root)."""
    name = params.get("user", "").strip()
    group = params.get("group", "").strip()
    if not name:
        if group:
            raise ResourceError("invalid_parameter", "parameter 'group' needs 'user' as well")
        return None
    try:
        entry = pwd.getpwuid(int(name)) if name.isdigit() else pwd.getpwnam(name)
    except (KeyError, ValueError, OverflowError):
        raise ResourceError("invalid_parameter",
                            f"user {name!r} does not exist (parameter 'user')") from None
    gid = entry.pw_gid
    if group:
        try:
            gid = (grp.getgrgid(int(group)) if group.isdigit() else grp.getgrnam(group)).gr_gid
        except (KeyError, ValueError, OverflowError):
            raise ResourceError("invalid_parameter",
                                f"group {group!r} does not exist (parameter 'group')") from None
    return RunAs(entry.pw_name, entry.pw_uid, gid, entry.pw_dir or "/")


class ProcessResource(Resource):
    """A command the agent starts, watches and stops itself."""

    def __init__(self, spec: ResourceSpec, reaper: Reaper, state_dir: str) -> None:
        super().__init__(spec, reaper, state_dir)
        params = spec.params
        command = params.get("command", "").strip()
        if not command:
            raise ResourceError("invalid_parameter", "process resource needs parameter 'command'")
        if params.get("shell", "").lower() in _TRUE:
            self.argv = ["/bin/sh", "-c", command]
        else:
            try:
                self.argv = shlex.split(command)
            except ValueError as exc:
                raise ResourceError("invalid_parameter", f"command: {exc}") from None
        self.run_as = run_as(params)
        login = self.run_as.environment() if self.run_as else {}
        self.env = {**os.environ, **login, **parse_environment(params)}
        self.cwd = params.get("cwd") or None
        if self.cwd is None and self.run_as is not None:
            self.cwd = self.run_as.home if os.path.isdir(self.run_as.home) else "/"
        self.pidfile = params.get("pidfile") or None
        try:
            self.start_wait = float(params.get("start_wait", "0"))
        except ValueError:
            raise ResourceError("invalid_parameter", "start_wait must be seconds") from None
        self.log_path = os.path.join(state_dir, "logs", f"{spec.name}.log")
        self.record_path = os.path.join(state_dir, "resources", f"{spec.name}.json")
        self._lock = threading.Lock()
        self._exited = threading.Condition(self._lock)
        self._pid: int | None = None
        self._pgid: int | None = None
        self._start_time: int | None = None
        self._last_exit = ""
        self._stopping = False
        self._adopt()

    def watches_exit(self) -> bool:
        return True

    def output(self) -> str:
        return read_tail(self.log_path)

    def running_pid(self) -> int | None:
        with self._lock:
            return self._pid

    # -- operations ---------------------------------------------------------------------

    def start(self, timeout: float) -> OpResult:
        began = time.monotonic()
        with self._lock:
            if self._pid is not None:
                return OpResult(OCF_SUCCESS, "done", "already running")
            self._stopping = False
            self._last_exit = ""
        if self.cwd and not os.path.isdir(self.cwd):
            return OpResult(OCF_ERR_CONFIGURED, "error", f"cwd {self.cwd} is not a directory")
        refusal = self.run_as.startable() if self.run_as else None
        if refusal:
            return OpResult(OCF_ERR_PERM, "error", refusal)
        identity = self.run_as.spawn_kwargs() if self.run_as else {}
        os.makedirs(os.path.dirname(self.log_path), exist_ok=True)
        if self.pidfile:
            _unlink(self.pidfile)
        try:
            with open(self.log_path, "ab") as log:
                child = self.reaper.spawn(self.argv, on_exit=self._leader_exit,
                                          stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                          env=self.env, cwd=self.cwd, start_new_session=True,
                                          close_fds=True, **identity)
        except FileNotFoundError:
            return OpResult(OCF_ERR_INSTALLED, "error", f"command not found: {self.argv[0]}")
        except PermissionError as exc:
            return OpResult(OCF_ERR_PERM, "error", f"cannot execute {self.argv[0]}: {exc}")
        except OSError as exc:
            return OpResult(OCF_ERR_GENERIC, "error", f"cannot start: {exc}")
        with self._lock:
            self._pgid = child.pid
            if not self.pidfile and not child.exited.is_set():
                self._track(child.pid)
        if self.pidfile:
            result = self._await_daemon(child, began + timeout)
        else:
            result = self._await_start(child)
        result.duration_ms = int((time.monotonic() - began) * 1000)
        return result

    def stop(self, timeout: float) -> OpResult:
        began = time.monotonic()
        with self._lock:
            self._stopping = True
            pid, pgid = self._pid, self._pgid
        reason = ""
        if pid is not None:
            _signal(pid, pgid, signal.SIGTERM)
            if not self._wait_exit(began + timeout * 0.8):
                reason = f"did not stop within {timeout * 0.8:g}s of SIGTERM: sent SIGKILL"
                _signal(pid, pgid, signal.SIGKILL)
                if not self._wait_exit(max(began + timeout, time.monotonic() + 1.0)):
                    return OpResult(OCF_ERR_GENERIC, "timeout",
                                    f"process {pid} survived SIGKILL", self.output(),
                                    int((time.monotonic() - began) * 1000))
        if pgid is not None:
            kill_group(pgid, signal.SIGKILL)
        with self._lock:
            self._pgid = None
        _unlink(self.record_path)
        return OpResult(OCF_SUCCESS, "done", reason, self.output() if reason else "",
                        int((time.monotonic() - began) * 1000))

    def monitor(self, timeout: float, interval_ms: int = 0) -> OpResult:
        with self._lock:
            pid, start_time, last_exit = self._pid, self._start_time, self._last_exit
        if pid is not None and proc_alive(pid, start_time):
            return OpResult(OCF_SUCCESS)
        if last_exit:
            return OpResult(OCF_NOT_RUNNING, "done", last_exit, self.output())
        return OpResult(OCF_NOT_RUNNING, "done", "not running")

    def close(self) -> None:
        with self._lock:
            pid, self._pid = self._pid, None
        if pid is not None:
            self.reaper.unwatch(pid)

    # -- internals ----------------------------------------------------------------------

    def _await_start(self, child) -> OpResult:
        """Optionally give the command ``start_wait`` seconds to fail before calling it started."""
        if self.start_wait > 0:
            child.exited.wait(self.start_wait)
        if child.exited.is_set():
            return OpResult(OCF_ERR_GENERIC, "error", describe_status(child.status), self.output())
        return OpResult(OCF_SUCCESS)

    def _await_daemon(self, child, deadline: float) -> OpResult:
        """Wait for the launcher to exit 0 and the pidfile to name a live daemon."""
        status = child.wait(max(0.0, deadline - time.monotonic()))
        if status is None:
            return OpResult(OCF_ERR_GENERIC, "timeout", "launcher did not exit before the timeout",
                            self.output())
        if status != 0:
            return OpResult(OCF_ERR_GENERIC, "error", "launcher " + describe_status(status),
                            self.output())
        while True:
            pid = _read_pid(self.pidfile or "")
            if pid and proc_alive(pid) and not self._owns(pid):
                return OpResult(OCF_ERR_GENERIC, "error",
                                f"pidfile {self.pidfile} names process {pid}, which is not "
                                f"user {self.run_as.user}'s", self.output())
            if pid and proc_alive(pid):
                with self._lock:
                    self._track(pid)
                return OpResult(OCF_SUCCESS)
            if time.monotonic() >= deadline:
                return OpResult(OCF_ERR_GENERIC, "timeout",
                                f"pidfile {self.pidfile} names no live process", self.output())
            time.sleep(0.01)

    def _owns(self, pid: int) -> bool:
        """The process runs as the resource's user (always true without one)."""
        return self.run_as is None or _proc_uid(pid) == self.run_as.uid

    def _track(self, pid: int) -> None:
        """Watch pid as the resource (lock held) and record it for a restarted agent."""
        self._pid = pid
        self._start_time = proc_start_time(pid)
        if pid != self._pgid:
            self.reaper.watch(pid, self._tracked_exit)
        os.makedirs(os.path.dirname(self.record_path), exist_ok=True)
        tmp = self.record_path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump({"pid": pid, "start_time": self._start_time, "pgid": self._pgid,
                       "argv": self.argv}, f)
        os.replace(tmp, self.record_path)

    def _leader_exit(self, pid: int, status: int | None) -> None:
        if not self.pidfile:
            self._tracked_exit(pid, status)

    def _tracked_exit(self, pid: int, status: int | None) -> None:
        """Runs on the reaper thread the moment the resource's process is gone."""
        with self._lock:
            if pid != self._pid:
                if self._pid is None:
                    self._last_exit = describe_status(status)
                return
            self._pid = None
            self._last_exit = describe_status(status)
            expected = self._stopping
            self._exited.notify_all()
        if not expected and self.on_failure is not None:
            self.on_failure(self._last_exit, self.output())

    def _wait_exit(self, deadline: float) -> bool:
        with self._lock:
            while self._pid is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._exited.wait(remaining)
            return True

    def _adopt(self) -> None:
        """Take over a process a previous agent started, if it still runs."""
        try:
            with open(self.record_path, encoding="utf-8") as f:
                record = json.load(f)
            pid, start_time = int(record["pid"]), record.get("start_time")
            pgid = record.get("pgid")
        except (OSError, ValueError, KeyError, TypeError):
            return
        if not proc_alive(pid, start_time):
            _unlink(self.record_path)
            return
        self._pid, self._start_time = pid, start_time
        self._pgid = int(pgid) if pgid else None
        self.reaper.watch(pid, self._tracked_exit)


def _signal(pid: int, pgid: int | None, sig: int) -> None:
    """Signal the process group and the process itself (a daemon may have its own group)."""
    if pgid is not None:
        kill_group(pgid, sig)
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _proc_uid(pid: int) -> int | None:
    """The real uid of a process, from ``/proc/<pid>/status``."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("Uid:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def _read_pid(path: str) -> int | None:
    try:
        with open(path, encoding="ascii") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
