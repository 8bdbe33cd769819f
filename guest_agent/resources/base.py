"""The interface every resource class implements, and what they share.

Results use OCF return codes whatever the class, so the DPE reasons about one vocabulary
(Pacemaker's). Input mistakes that no operation can fix (a missing ``command``, a bad type
name) raise :class:`ResourceError` when the resource is built, so the caller gets an error
response instead of a failed operation.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field

from guest_agent.reaper import Reaper

OCF_SUCCESS = 0
OCF_ERR_GENERIC = 1
OCF_ERR_ARGS = 2
OCF_ERR_UNIMPLEMENTED = 3
OCF_ERR_PERM = 4
OCF_ERR_INSTALLED = 5
OCF_ERR_CONFIGURED = 6
OCF_NOT_RUNNING = 7

OUTPUT_TAIL = 2048
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+-]{0,127}$")
_XML_BAD = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


class ResourceError(Exception):
    """A request names a resource the agent cannot build; becomes an error response."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class ProbeSpec:
    """A liveness probe of a service: ``http`` GET, ``tcp`` connect or ``exec`` command."""

    kind: str
    interval: float
    timeout: float
    target: str
    failures: int = 1
    grace: float = 5.0
    expect_status: int | None = None


@dataclass(frozen=True)
class ResourceSpec:
    """Everything the DPE says about one resource; the agent keeps no other configuration."""

    name: str
    cls: str
    type: str = ""
    provider: str = ""
    params: dict[str, str] = field(default_factory=dict)
    probes: tuple[ProbeSpec, ...] = ()

    def same_definition(self, other: ResourceSpec) -> bool:
        """True when another request describes the same resource (so it can be reused)."""
        return (self.cls, self.type, self.provider, self.params) == (
            other.cls, other.type, other.provider, other.params)


@dataclass
class OpResult:
    """The outcome of one operation, as sent in ``<op_result>`` and reports."""

    rc: int
    status: str = "done"
    reason: str = ""
    output: str = ""
    duration_ms: int = 0


FailureCallback = Callable[[str, str], None]
"""Called with (reason, output tail) when a resource dies on its own."""


class Resource(ABC):
    """One resource of one class; the agent serializes operations on it."""

    def __init__(self, spec: ResourceSpec, reaper: Reaper, state_dir: str) -> None:
        self.spec = spec
        self.reaper = reaper
        self.state_dir = state_dir
        self.on_failure: FailureCallback | None = None

    @property
    def name(self) -> str:
        return self.spec.name

    @abstractmethod
    def start(self, timeout: float) -> OpResult:
        """Start the resource; rc 0 when it runs."""

    @abstractmethod
    def stop(self, timeout: float) -> OpResult:
        """Stop it; rc 0 when it no longer runs (also when it was not running)."""

    @abstractmethod
    def monitor(self, timeout: float, interval_ms: int = 0) -> OpResult:
        """Probe it: rc 0 running, 7 cleanly not running, anything else failed."""

    def watches_exit(self) -> bool:
        """True when the class sees the resource's death itself (no polling needed)."""
        return False

    def close(self) -> None:
        """Release watchers; the agent forgets the resource."""
        self.on_failure = None


class ScriptResource(Resource):
    """A class that runs one helper script per operation (an OCF agent, an LSB init script).

    Start, stop and monitor differ only in the action passed to the script; subclasses name
    their monitor action and say how one action runs and how its exit code maps to OCF.
    """

    monitor_action = "monitor"

    @abstractmethod
    def run_action(self, action: str, timeout: float, interval_ms: int = 0) -> OpResult:
        """Run the script with one action and turn its outcome into an OCF result."""

    def start(self, timeout: float) -> OpResult:
        return self.run_action("start", timeout)

    def stop(self, timeout: float) -> OpResult:
        return self.run_action("stop", timeout)

    def monitor(self, timeout: float, interval_ms: int = 0) -> OpResult:
        return self.run_action(self.monitor_action, timeout, interval_ms)


def timed_out(action: str, timeout: float, output: str, duration_ms: int) -> OpResult:
    """The result of a helper script killed at its deadline."""
    return OpResult(OCF_ERR_GENERIC, "timeout", f"{action} timed out after {timeout:g}s",
                    output, duration_ms)


def check_name(value: str, what: str) -> str:
    """Refuse names that could escape a directory or break a command line."""
    if not _NAME.match(value or "") or ".." in value:
        raise ResourceError("invalid_parameter", f"{what} {value!r} is not a valid name")
    return value


def xml_text(text: str) -> str:
    """Drop characters XML 1.0 cannot carry (resource output can be anything)."""
    return _XML_BAD.sub("\ufffd", text)


def read_tail(path: str, limit: int = OUTPUT_TAIL) -> str:
    """The last bytes of a log file, decoded leniently."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - limit))
            return xml_text(f.read().decode("utf-8", "replace"))
    except OSError:
        return ""


def run_command(reaper: Reaper, argv: list[str], env: dict[str, str], timeout: float,
                cwd: str | None = None) -> tuple[int | None, str, float]:
    """Run a helper (an OCF agent, an init script) with a deadline.

    Returns (wait status or None on timeout, output tail, seconds taken). On timeout the whole
    process group is killed, so a hung agent leaves nothing behind.
    """
    began = time.monotonic()
    # an anonymous memory file, not tempfile (which imports shutil and its compressors)
    with open(os.memfd_create("pcloud-output", os.MFD_CLOEXEC), "w+b") as out:
        child = reaper.spawn(argv, stdin=subprocess.DEVNULL, stdout=out,
                             stderr=out, env=env, cwd=cwd, start_new_session=True,
                             close_fds=True)
        status = child.wait(timeout)
        if status is None:
            kill_group(child.pid, signal.SIGKILL)
            child.wait(5.0)
        out.seek(0, os.SEEK_END)
        out.seek(max(0, out.tell() - OUTPUT_TAIL))
        output = xml_text(out.read().decode("utf-8", "replace"))
    return status, output, time.monotonic() - began


def kill_group(pgid: int, sig: int) -> bool:
    """Signal a whole process group; False when it no longer exists."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    except PermissionError:
        return False
    return True


def exit_code(status: int | None) -> int | None:
    """Exit code of a normal exit, None for a death by signal or a timeout."""
    if status is None or os.WIFSIGNALED(status):
        return None
    return os.waitstatus_to_exitcode(status)
