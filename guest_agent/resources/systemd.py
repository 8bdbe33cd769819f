"""systemd units through ``systemctl``; refused with a clear reason where systemd is not init."""

from __future__ import annotations

import os

from guest_agent.reaper import Reaper
from guest_agent.resources.base import (
    OCF_ERR_GENERIC,
    OCF_ERR_INSTALLED,
    OCF_NOT_RUNNING,
    OCF_SUCCESS,
    OpResult,
    Resource,
    ResourceSpec,
    check_name,
    exit_code,
    run_command,
)

_SUFFIXES = (".service", ".socket", ".target", ".mount", ".timer", ".path")


def systemd_running() -> bool:
    """True when systemd is PID 1 (its runtime directory exists, as sd_booted() checks)."""
    return os.path.isdir("/run/systemd/system")


class SystemdResource(Resource):
    """``systemctl start|stop`` and ``is-active`` of one unit."""

    def __init__(self, spec: ResourceSpec, reaper: Reaper, state_dir: str) -> None:
        super().__init__(spec, reaper, state_dir)
        unit = check_name(spec.type, "type")
        self.unit = unit if unit.endswith(_SUFFIXES) else unit + ".service"

    def _unsupported(self) -> OpResult | None:
        if not systemd_running():
            return OpResult(OCF_ERR_INSTALLED, "error",
                            "class systemd is unsupported here: systemd is not PID 1")
        import shutil  # here: it imports bz2 and lzma, not worth an agent's RSS

        if shutil.which("systemctl") is None:
            return OpResult(OCF_ERR_INSTALLED, "error", "systemctl is not installed")
        return None

    def _systemctl(self, args: list[str], timeout: float) -> tuple[int | None, str, int]:
        env = dict(os.environ, SYSTEMD_PAGER="", LANG="C")
        status, output, took = run_command(self.reaper, ["systemctl", *args], env, timeout, "/")
        return (None if status is None else exit_code(status)), output, int(took * 1000)

    def _action(self, action: str, timeout: float) -> OpResult:
        refused = self._unsupported()
        if refused:
            return refused
        code, output, took = self._systemctl([action, self.unit], timeout)
        if code is None:
            return OpResult(OCF_ERR_GENERIC, "timeout", f"systemctl {action} {self.unit} timed out",
                            output, took)
        if code != 0:
            return OpResult(OCF_ERR_GENERIC, "done",
                            f"systemctl {action} {self.unit} exited with status {code}", output,
                            took)
        return OpResult(OCF_SUCCESS, "done", "", output, took)

    def start(self, timeout: float) -> OpResult:
        return self._action("start", timeout)

    def stop(self, timeout: float) -> OpResult:
        return self._action("stop", timeout)

    def monitor(self, timeout: float, interval_ms: int = 0) -> OpResult:
        refused = self._unsupported()
        if refused:
            return refused
        code, output, took = self._systemctl(["is-active", self.unit], timeout)
        if code is None:
            return OpResult(OCF_ERR_GENERIC, "timeout", "systemctl is-active timed out", output,
                            took)
        state = output.strip().splitlines()[-1] if output.strip() else "unknown"
        if state in ("active", "reloading", "activating"):
            return OpResult(OCF_SUCCESS, "done", "", output, took)
        if state == "failed":
            return OpResult(OCF_NOT_RUNNING, "done", f"unit {self.unit} failed", output, took)
        return OpResult(OCF_NOT_RUNNING, "done", f"unit {self.unit} is {state}", output, took)
