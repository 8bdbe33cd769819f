"""OCF resource agents (``/usr/lib/ocf/resource.d/<provider>/<type>``), run as Pacemaker does."""

from __future__ import annotations

import os
import re

from guest_agent.reaper import Reaper
from guest_agent.resources.base import (
    OCF_ERR_CONFIGURED,
    OCF_ERR_GENERIC,
    OCF_ERR_INSTALLED,
    OCF_NOT_RUNNING,
    OCF_SUCCESS,
    OpResult,
    ResourceError,
    ResourceSpec,
    ScriptResource,
    check_name,
    exit_code,
    run_command,
    timed_out,
)

_PARAM = re.compile(r"^[A-Za-z0-9_]{1,64}$")
_OCF_CODES = set(range(0, 8))
OUTPUT_TAIL_LINES = 3    # of an agent's output, quoted when it gave no exit reason


BOOT_ID = "/proc/sys/kernel/random/boot_id"


def ocf_root() -> str:
    return os.environ.get("OCF_ROOT", "/usr/lib/ocf")


def clear_rsctmp_after_reboot(state_dir: str, boot_id_path: str = BOOT_ID) -> bool:
    """Empty ``HA_RSCTMP`` when the machine booted since the agent last ran; True if it did.

    OCF agents keep "I am running" files there (Dummy's state, ``ha_pseudo_resource``), on
    the assumption that it is ``/run`` and a boot empties it. Ours is on the image's disk, so
    without this a rebooted VM would find resources "running" that no longer are.
    """
    try:
        with open(boot_id_path) as f:
            boot = f.read().strip()
    except OSError:
        return False
    rsctmp = os.path.join(state_dir, "rsctmp")
    marker = os.path.join(state_dir, "rsctmp.boot_id")
    try:
        with open(marker) as f:
            if f.read().strip() == boot:
                return False
    except OSError:
        pass
    if os.path.isdir(rsctmp):
        import shutil  # here: it imports bz2 and lzma, not worth an agent's RSS

        shutil.rmtree(rsctmp)
    with open(marker, "w") as f:
        f.write(boot + "\n")
    return True


class OCFResource(ScriptResource):
    """Runs ``<agent> start|stop|monitor`` with the OCF environment; exit codes are OCF rcs."""

    def __init__(self, spec: ResourceSpec, reaper: Reaper, state_dir: str) -> None:
        super().__init__(spec, reaper, state_dir)
        provider = check_name(spec.provider or "heartbeat", "provider")
        check_name(spec.type, "type")
        for key in spec.params:
            if not _PARAM.match(key):
                raise ResourceError("invalid_parameter", f"parameter name {key!r} is not valid")
        self.path = os.path.join(ocf_root(), "resource.d", provider, spec.type)
        self.rsctmp = os.path.join(state_dir, "rsctmp")

    def environment(self, action: str, timeout: float, interval_ms: int) -> dict[str, str]:
        """The variables an OCF agent expects (pacemaker-execd's set, minus cluster ones)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("OCF_")}
        env.update({
            "OCF_ROOT": ocf_root(),
            "OCF_RA_VERSION_MAJOR": "1",
            "OCF_RA_VERSION_MINOR": "1",
            "OCF_RESOURCE_INSTANCE": self.spec.name,
            "OCF_RESOURCE_TYPE": self.spec.type,
            "OCF_RESOURCE_PROVIDER": self.spec.provider or "heartbeat",
            "OCF_RESKEY_CRM_meta_timeout": str(int(timeout * 1000)),
            "OCF_RESKEY_CRM_meta_interval": str(interval_ms),
            "OCF_RESKEY_CRM_meta_name": action,
            "HA_RSCTMP": self.rsctmp,
        })
        for key, value in self.spec.params.items():
            env[f"OCF_RESKEY_{key}"] = value
        return env

    def run_action(self, action: str, timeout: float, interval_ms: int = 0) -> OpResult:
        if not os.access(self.path, os.X_OK):
            return OpResult(OCF_ERR_INSTALLED, "error",
                            f"OCF agent {self.path} is not installed or not executable")
        os.makedirs(self.rsctmp, exist_ok=True)
        status, output, took = run_command(self.reaper, [self.path, action],
                                           self.environment(action, timeout, interval_ms),
                                           timeout, cwd="/")
        duration = int(took * 1000)
        if status is None:
            return timed_out(action, timeout, output, duration)
        code = exit_code(status)
        if code is None:
            return OpResult(OCF_ERR_GENERIC, "error",
                            f"{action} killed by signal {os.WTERMSIG(status)}", output, duration)
        return OpResult(self.map_rc(action, code), "done", _reason(action, code, output),
                        output, duration)

    @staticmethod
    def map_rc(action: str, code: int) -> int:
        """OCF codes pass through; promoted states count as running; unknown codes as errors."""
        if code == 8:
            code = OCF_SUCCESS
        elif code not in _OCF_CODES:
            code = OCF_ERR_GENERIC
        if action == "stop" and code == OCF_NOT_RUNNING:
            code = OCF_SUCCESS
        return code


def _reason(action: str, code: int, output: str) -> str:
    """The agent's own words: its exit reasons (``ocf-exit-reason:``, the cause usually
    first, e.g. "apache httpd program not found; environment is invalid"), else a generic
    sentence with the last lines it wrote."""
    reasons: list[str] = []
    for line in output.splitlines():
        marker = line.find("ocf-exit-reason:")
        text = line[marker + len("ocf-exit-reason:"):].strip() if marker >= 0 else ""
        if text and text not in reasons:
            reasons.append(text)
    if reasons:
        return "; ".join(reasons)
    if code == OCF_SUCCESS:
        return ""
    if code == OCF_NOT_RUNNING:
        return "not running"
    generic = f"{action}: not configured" if code == OCF_ERR_CONFIGURED else \
        f"{action} exited with status {code}"
    tail = [line.strip() for line in output.splitlines() if line.strip()][-OUTPUT_TAIL_LINES:]
    return f"{generic}: {' / '.join(tail)}" if tail else generic
