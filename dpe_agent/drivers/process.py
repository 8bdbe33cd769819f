"""The ``process`` infrastructure: each assembly is a sandbox of processes on this host.

A sandbox is ``pcloud-agent --foreground`` and everything it starts, kept in one process tree
so that stopping or fencing it is like powering off a VM:

- as root, in its own PID namespace (``unshare --pid --fork --kill-child --mount-proc``): the
  agent is PID 1 there and reaps; killing it makes the kernel kill everything in the namespace,
  and ``--kill-child`` kills it if the ``unshare`` process itself is killed;
- otherwise in its own session and process group, the agent being a child subreaper so
  orphans stay in its tree; fencing freezes and kills the whole tree and the group.

As root it also gets a mount namespace of its own with empty tmpfs on ``/run``, ``/tmp`` and
``/var/run`` (``sandbox_mounts``), so a fenced and restarted sandbox starts from what a rebooted
VM would see there; without root or ``unshare`` it shares the host's, with one warning.

The sandbox's directory (``spec.state_dir``: ``<state>/dpe/<dep>/assemblies/<asm>``) is its
disk: the agent's own state, its log, ``sandbox.pid`` (pid, kernel start time, mode), through
which a restarted DPE re-adopts a sandbox that is still running, and ``persistent/``, where
resources keep what must survive a reboot (``PCLOUD_PERSISTENT_DIR``, the sandbox's working
directory). What a VM keeps under ``/run`` but the agent keeps in this directory (``rsctmp``,
the OCF agents' ``HA_RSCTMP``) is emptied at each start, as a boot empties ``/run``.
See docs/architecture.md, "The process sandbox".
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

from dpe_agent.drivers import sandbox_mounts
from dpe_agent.drivers.base import AssemblySpec, DeathReport, DriverError, PowerState
from dpe_agent.drivers.pidwatch import PidWatch
from pcloud import procstat
from pcloud.credentials import format_credentials, scrubbed_environ, without_credentials
from pcloud.fsutil import private_dir, write_private

log = logging.getLogger(__name__)

PID_FILE = "sandbox.pid"
LOG_FILE = "agent.log"
TOKEN_VAR = "PCLOUD_SANDBOX"
#: the agent's login for this boot, 0600 in the sandbox's 0700 state dir (docs/security.md)
CREDENTIALS_FILE = "credentials"
#: resources' state that survives a fence and a restart, like a VM's disk
PERSISTENT_DIR = "persistent"
PERSISTENT_VAR = "PCLOUD_PERSISTENT_DIR"
#: what the agent keeps in its state dir but a machine keeps under /run: emptied at each start
#: (``rsctmp`` is the OCF agents' ``HA_RSCTMP``, guest_agent/resources/ocf.py)
VOLATILE_DIRS = ("rsctmp",)


def _start_time(pid: int) -> int | None:
    fields = procstat.fields(pid)
    return int(fields[19]) if fields else None


def _alive(pid: int, start: int | None) -> bool:
    """The process exists, is not a zombie, and is the one started at ``start``."""
    fields = procstat.fields(pid)
    if fields is None or fields[0] in ("Z", "X"):
        return False
    return start is None or int(fields[19]) == start


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def _descendants(root: int) -> list[int]:
    """All processes below ``root`` (by parent pid), found with one scan of /proc."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = procstat.fields(int(entry))
            if fields:
                parents.setdefault(int(fields[1]), []).append(int(entry))
    found, todo = [], [root]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _with_token(token: str) -> list[int]:
    """Processes whose environment holds ``PCLOUD_SANDBOX=<token>``."""
    needle = f"{TOKEN_VAR}={token}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            try:
                environ = Path(f"/proc/{entry}/environ").read_bytes()
            except OSError:
                continue
            if needle in environ.split(b"\0"):
                found.append(int(entry))
    return found


def _kill(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _killpg(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _source_roots() -> list[str]:
    """The folders the agent's packages are imported from (a checkout, or site-packages)."""
    roots = []
    for package in ("guest_agent", "pcloud"):
        spec = importlib.util.find_spec(package)
        if spec is not None and spec.origin:
            roots.append(str(Path(spec.origin).resolve().parent.parent))
    return roots


def agent_command() -> list[str]:
    """How to run the guest agent: the script beside this interpreter, on PATH, or -m."""
    beside = Path(sys.executable).with_name("pcloud-agent")
    if beside.exists():
        return [str(beside)]
    found = shutil.which("pcloud-agent")
    return [found] if found else [sys.executable, "-m", "guest_agent.cli"]


class ProcessDriver:
    """Sandboxes on this host; one instance per DPE, safe to call from several threads."""

    name = "process"
    # The agent heartbeats about a second after start; the margin covers Python's start-up on
    # a loaded host, and is what a DPE allowed every assembly before drivers said their own.
    boot_timeout = 30.0

    def __init__(self, use_pid_namespace: bool | None = None,
                 agent_argv: list[str] | None = None,
                 use_mount_namespace: bool | None = None) -> None:
        if use_pid_namespace is None:
            use_pid_namespace = os.geteuid() == 0 and shutil.which("unshare") is not None
        self.use_pid_namespace = use_pid_namespace
        if use_mount_namespace is None:
            reason = sandbox_mounts.unavailable()
            if reason is not None:
                sandbox_mounts.warn_unavailable(reason)
            use_mount_namespace = reason is None
        self.use_mount_namespace = use_mount_namespace
        self.agent_argv = agent_argv or agent_command()
        self._children: dict[str, subprocess.Popen] = {}
        self._lock = threading.Lock()
        self._report: DeathReport | None = None
        self._names: dict[str, str] = {}          # watched state dir -> assembly name
        self._deaths = PidWatch(self._exited, name="sandbox-deaths")

    def watch_deaths(self, report: DeathReport) -> None:
        """Report each sandbox's exit the moment it happens, through a pidfd on its top
        process (also for a sandbox found running, so it works after a DPE restart)."""
        self._report = report

    def _arm(self, spec: AssemblySpec, pid: int) -> None:
        if self._report is None:
            return
        key = spec.state_dir.as_posix()
        self._names[key] = spec.name
        if not self._deaths.arm(key, pid):
            self._exited(key, pid)

    def _exited(self, key: str, pid: int) -> None:
        """Watcher thread: a sandbox died and nobody here stopped or fenced it."""
        with self._lock:
            child = self._children.get(key)
        reason = f"sandbox process {pid} exited"
        if child is not None and child.pid == pid:
            code = child.wait()
            reason = (f"sandbox exited with signal {-code}" if code < 0 else
                      f"sandbox exited with status {code}")
        report, name = self._report, self._names.get(key)
        if report is not None and name is not None:
            report(name, reason)

    def _pid_file(self, spec: AssemblySpec) -> Path:
        return Path(spec.state_dir) / PID_FILE

    def _read(self, spec: AssemblySpec) -> dict | None:
        try:
            return json.loads(self._pid_file(spec).read_text())
        except (OSError, ValueError):
            return None

    def _reap(self, spec: AssemblySpec) -> None:
        """Collect our own exited sandbox process so it does not linger as a zombie."""
        with self._lock:
            child = self._children.get(spec.state_dir.as_posix())
            if child is not None and child.poll() is not None:
                del self._children[spec.state_dir.as_posix()]

    def sandbox_pid(self, spec: AssemblySpec) -> int | None:
        """The pid of the running sandbox's top process, or None."""
        self._reap(spec)
        info = self._read(spec)
        if info and _alive(int(info["pid"]), info.get("start")):
            return int(info["pid"])
        return None

    def agent_pid(self, spec: AssemblySpec) -> int | None:
        """The pid of the guest agent (the namespace's init in PID-namespace mode)."""
        pid = self.sandbox_pid(spec)
        info = self._read(spec)
        if pid is None or not info:
            return None
        if info.get("mode") == "pidns":
            children = _children(pid)
            return children[0] if children else None
        return pid

    def boot_progress(self, spec: AssemblySpec) -> int | None:
        """The CPU time of the sandbox's processes, in clock ticks: it moves while a slow
        start is under way (a starved host, a heavy import), not while the agent hangs.
        None: no sandbox."""
        root = self.sandbox_pid(spec)
        if root is None:
            return None
        ticks, stack = 0, [root]
        while stack:
            pid = stack.pop()
            used = procstat.cpu_ticks(pid)
            if used is not None:
                ticks += used
                stack.extend(_children(pid))
        return ticks

    def status(self, spec: AssemblySpec) -> PowerState:
        """Running or not; a running sandbox not yet watched (found by a restarted DPE) is
        watched from now on."""
        pid = self.sandbox_pid(spec)
        if pid is None:
            return PowerState.STOPPED
        if self._deaths.watched(spec.state_dir.as_posix()) != pid:
            self._arm(spec, pid)
        return PowerState.RUNNING

    def start(self, spec: AssemblySpec) -> None:
        """Spawn the sandbox in a new session; a sandbox already running is left alone."""
        if self.sandbox_pid(spec):
            return
        folder = private_dir(Path(spec.state_dir))
        if spec.credentials is None:
            raise DriverError(f"no agent login for {spec.deployable}/{spec.name}")
        write_private(folder / CREDENTIALS_FILE, format_credentials(spec.credentials))
        agent = [*self.agent_argv, "--foreground", "--deployable", spec.deployable,
                 "--assembly", spec.name, "--uuid", spec.uuid, "--state-dir", str(folder),
                 "--heartbeat-interval", f"{spec.heartbeat_interval:g}",
                 "--broker-url", without_credentials(spec.broker_url),
                 "--credentials", str(folder / CREDENTIALS_FILE)]
        for name in VOLATILE_DIRS:
            shutil.rmtree(folder / name, ignore_errors=True)
        persistent = folder / PERSISTENT_DIR
        persistent.mkdir(mode=0o755, exist_ok=True)
        argv = agent
        if self.use_mount_namespace:
            # what the agent needs from the host stays visible if it lies under /tmp or /run:
            # its directory, its program, this interpreter and what it imports from (a
            # checkout installed in editable mode is found by a finder, not by sys.path)
            keep = [str(folder), *self.agent_argv, sys.prefix, sys.base_prefix, *sys.path,
                    *_source_roots()]
            argv = sandbox_mounts.wrap(agent, keep=keep)
        mode = "pgroup"
        if self.use_pid_namespace:
            argv = ["unshare", "--pid", "--fork", "--kill-child", "--mount-proc", *argv]
            mode = "pidns"
        elif self.use_mount_namespace:
            argv = ["unshare", "--mount", *argv]
        if self.use_mount_namespace:
            argv[1:1] = ["--propagation", "private"]
        token = uuid.uuid4().hex
        env = scrubbed_environ(PCLOUD_STATE_DIR=str(folder))
        env[PERSISTENT_VAR] = str(persistent)
        env[TOKEN_VAR] = token
        with open(folder / LOG_FILE, "ab") as out:
            try:
                child = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                         start_new_session=True, close_fds=True, env=env,
                                         cwd=str(persistent))
            except OSError as exc:
                raise DriverError(f"cannot start sandbox {spec.deployable}/{spec.name}: "
                                  f"{exc}") from exc
        info = {"pid": child.pid, "start": _start_time(child.pid), "mode": mode, "token": token,
                "mounts": self.use_mount_namespace}
        tmp = folder / (PID_FILE + ".tmp")
        tmp.write_text(json.dumps(info))
        tmp.replace(self._pid_file(spec))
        with self._lock:
            self._children[folder.as_posix()] = child
        self._arm(spec, child.pid)
        log.info("sandbox %s/%s started (pid %d, %s%s)", spec.deployable, spec.name, child.pid,
                 mode, ", own /run and /tmp" if self.use_mount_namespace else "")

    def _wait_gone(self, spec: AssemblySpec, pid: int, start: int | None, timeout: float) -> bool:
        with self._lock:
            child = self._children.get(spec.state_dir.as_posix())
        if child is not None and child.pid == pid:
            try:
                child.wait(timeout=max(0.0, timeout))
            except subprocess.TimeoutExpired:
                return False
            self._reap(spec)
            return True
        deadline = time.monotonic() + timeout
        while _alive(pid, start):
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.02)
        return True

    def stop(self, spec: AssemblySpec, timeout: float) -> None:
        """SIGTERM the agent (it stops its resources), then fence whatever is left."""
        self._deaths.disarm(spec.state_dir.as_posix())
        info = self._read(spec)
        pid = self.sandbox_pid(spec)
        if pid is None or info is None:
            self._pid_file(spec).unlink(missing_ok=True)
            return
        agent = self.agent_pid(spec) or pid
        _kill(agent, signal.SIGTERM)
        if not self._wait_gone(spec, pid, info.get("start"), timeout):
            log.warning("sandbox %s/%s did not stop within %.1fs: killing it", spec.deployable,
                        spec.name, timeout)
        self.fence(spec)

    def fence(self, spec: AssemblySpec) -> None:
        """Kill the whole sandbox at once; returns when nothing of it runs any more."""
        self._deaths.disarm(spec.state_dir.as_posix())
        info = self._read(spec)
        pid = self.sandbox_pid(spec)
        if pid is not None and info is not None:
            start = info.get("start")
            inits: list[tuple[int, int | None]] = []
            if info.get("mode") == "pidns":
                inits = [(init, _start_time(init)) for init in _children(pid)]
                for init, _ in inits:
                    _kill(init, signal.SIGKILL)
                _kill(pid, signal.SIGKILL)
            else:
                tree = _descendants(pid)
                for member in [pid, *tree]:
                    _kill(member, signal.SIGSTOP)
                for member in [pid, *_descendants(pid), *tree]:
                    _kill(member, signal.SIGKILL)
            _killpg(pid, signal.SIGKILL)
            deadline = time.monotonic() + 10.0
            for init, init_start in inits:
                while _alive(init, init_start) and time.monotonic() < deadline:
                    time.sleep(0.005)
            if not self._wait_gone(spec, pid, start, deadline - time.monotonic()):
                raise DriverError(f"sandbox {spec.deployable}/{spec.name} (pid {pid}) "
                                  "survived SIGKILL")
            log.info("sandbox %s/%s fenced (pid %d)", spec.deployable, spec.name, pid)
        if info is not None and info.get("mode") == "pgroup":
            self._kill_orphans(int(info["pid"]), info.get("token"))
        self._pid_file(spec).unlink(missing_ok=True)

    @staticmethod
    def _kill_orphans(pgid: int, token: str | None) -> None:
        """Kill what is left of a group-mode sandbox whose agent is gone.

        The kernel never hands out a pid still in use as a process group id, so if the
        sandbox's leader is gone and its group still has members, they are the sandbox's.
        Descendants that left the group (``setsid``) still carry the sandbox's token in their
        environment.
        """
        if procstat.fields(pgid) is None:
            _killpg(pgid, signal.SIGKILL)
        if token:
            for pid in _with_token(token):
                _kill(pid, signal.SIGKILL)
