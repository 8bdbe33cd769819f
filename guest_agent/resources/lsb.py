"""LSB init scripts (``/etc/init.d/<type>``); their status codes are mapped to OCF."""

from __future__ import annotations

import os

from guest_agent.reaper import Reaper
from guest_agent.resources.base import (
    OCF_ERR_GENERIC,
    OCF_ERR_INSTALLED,
    OCF_NOT_RUNNING,
    OCF_SUCCESS,
    OpResult,
    ResourceSpec,
    ScriptResource,
    check_name,
    exit_code,
    run_command,
    timed_out,
)

INIT_DIR = "/etc/init.d"


def map_status(code: int) -> int:
    """LSB ``status``: 0 running; 1-3 not running (stale pid/lock file or clean); else error."""
    if code == 0:
        return OCF_SUCCESS
    if code in (1, 2, 3):
        return OCF_NOT_RUNNING
    return OCF_ERR_GENERIC


def map_action(action: str, code: int) -> int:
    """LSB start/stop exit codes 0-7 coincide with OCF's; stopping a stopped service is fine."""
    if code > 7:
        return OCF_ERR_GENERIC
    if action == "stop" and code == OCF_NOT_RUNNING:
        return OCF_SUCCESS
    return code


class LSBResource(ScriptResource):
    """Runs ``/etc/init.d/<type> start|stop|status``."""

    monitor_action = "status"

    def __init__(self, spec: ResourceSpec, reaper: Reaper, state_dir: str) -> None:
        super().__init__(spec, reaper, state_dir)
        self.path = os.path.join(INIT_DIR, check_name(spec.type, "type"))

    def run_action(self, action: str, timeout: float, interval_ms: int = 0) -> OpResult:
        if not os.access(self.path, os.X_OK):
            return OpResult(OCF_ERR_INSTALLED, "error", f"init script {self.path} is not installed")
        env = dict(os.environ, LANG="C")
        status, output, took = run_command(self.reaper, [self.path, action], env, timeout, "/")
        duration = int(took * 1000)
        if status is None:
            return timed_out(action, timeout, output, duration)
        code = exit_code(status)
        if code is None:
            return OpResult(OCF_ERR_GENERIC, "error", f"{action} killed by signal", output,
                            duration)
        rc = map_status(code) if action == "status" else map_action(action, code)
        reason = "" if rc == OCF_SUCCESS else f"{self.path} {action} exited with status {code}"
        return OpResult(rc, "done", reason, output, duration)
