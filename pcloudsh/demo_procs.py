"""Finding the demo's processes on this host: a resource, an assembly's sandbox, leftovers.

The demo plays the operator who logs into a VM and kills things, so it looks processes up the
way a person would (``/proc``), limited to those that carry the demo's own state directory in
their command line or environment, so it can never touch anything else on the machine.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Proc:
    pid: int
    ppid: int
    cmdline: str
    environ: bytes


def _read(pid: int) -> Proc | None:
    try:
        base = Path(f"/proc/{pid}")
        stat = (base / "stat").read_text().rsplit(")", 1)[1].split()
        if stat[0] in ("Z", "X"):
            return None
        cmdline = (base / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        return Proc(pid, int(stat[1]), cmdline, (base / "environ").read_bytes())
    except (OSError, IndexError, ValueError):
        return None


def processes() -> list[Proc]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            proc = _read(int(entry))
            if proc is not None:
                found.append(proc)
    return found


def ours(state_dir: Path) -> list[Proc]:
    """Live processes that name ``state_dir`` in their command line or environment."""
    marker = str(state_dir)
    return [p for p in processes() if marker in p.cmdline or marker.encode() in p.environ]


def leftovers(state_dir: Path) -> list[int]:
    return [p.pid for p in ours(state_dir)]


def resource_pid(state_dir: Path, needle: str) -> int | None:
    """The pid of the resource process whose command line contains ``needle``."""
    matches = [p for p in ours(state_dir) if needle in p.cmdline]
    pids = {p.pid for p in matches}
    leaves = [p.pid for p in matches if p.ppid not in pids]
    return max(leaves) if leaves else None


def sandbox_tree(state_dir: Path, deployable: str, assembly: str) -> list[int]:
    """Every process of one assembly's sandbox: its root(s) and all their descendants."""
    everything = processes()
    children: dict[int, list[int]] = {}
    for proc in everything:
        children.setdefault(proc.ppid, []).append(proc.pid)
    marker = str(state_dir)
    roots = [p for p in everything
             if f"--assembly {assembly} " in f"{p.cmdline} " and
             f"--deployable {deployable} " in p.cmdline and marker in p.cmdline]
    root_pids = {p.pid for p in roots}
    tree: list[int] = []
    stack = [p.pid for p in roots if p.ppid not in root_pids]
    while stack:
        pid = stack.pop()
        tree.append(pid)
        stack.extend(children.get(pid, []))
    return tree


def kill_tree(pids: list[int], timeout: float = 10.0) -> None:
    """SIGKILL every pid and wait until none is alive (zombies count as gone)."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(_read(pid) for pid in pids):
        time.sleep(0.02)
