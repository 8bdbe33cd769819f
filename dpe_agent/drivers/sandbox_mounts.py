"""A ``process`` sandbox's own ``/run``, ``/tmp`` and ``/var/run``: what a rebooted VM has.

A sandbox's first process runs in a mount namespace of its own (``unshare --mount
--propagation private``, so nothing mounted inside reaches the host and the host's later
mounts do not reach in) and, before it execs the guest agent, mounts empty tmpfs over the
host's volatile directories:

- ``/run`` (``mode=0755``, with ``/run/lock`` 1777 and ``/run/resource-agents`` 1755, as
  Debian's tmpfiles.d makes them at boot; ``/var/lock`` is a symlink to ``/run/lock`` there);
- ``/tmp`` (``mode=1777``);
- ``/var/run`` only when it is a directory of its own (on Debian it is a symlink to ``/run``).

The target of ``/etc/resolv.conf`` stays reachable when it lies under ``/run`` (a host with
systemd-resolved), so that the agent can still resolve the broker's name, and so do the
sandbox's own directory, the agent's program and what its interpreter imports when they lie
under ``/tmp`` (as in tests): each is bound back at its own path. Nothing else of the host's
``/run`` is seen inside: no systemd (``systemd`` resources are refused, as the agent does on
any machine without it), no D-Bus socket.

Mounts vanish with the namespace, that is with the sandbox's last process: a fenced and
restarted sandbox starts from empty directories, and nothing is left to unmount on the host.
"""

from __future__ import annotations

import functools
import logging
import os
import shlex
import shutil
import subprocess

log = logging.getLogger(__name__)

RUN_DIRS = (("lock", "1777"), ("resource-agents", "1755"))


def _under(path: str, folder: str) -> str | None:
    """``path`` relative to ``folder`` when it lies strictly under it, else None."""
    rel = os.path.relpath(path, folder)
    return None if rel == "." or rel.startswith("..") else rel


def _outermost(paths: list[str]) -> list[str]:
    """``paths`` without those that lie under another one of them."""
    kept: list[str] = []
    for path in sorted(set(paths)):
        if not any(path == k or _under(path, k) for k in kept):
            kept.append(path)
    return kept


def setup_script(keep: list[str] = ()) -> str:
    """The ``sh`` script that mounts the fresh directories, then execs ``"$@"``.

    ``keep``: host paths that stay visible where they are even when they lie under one of
    those directories (the sandbox's own folder, the agent's program: tests keep them in
    ``/tmp``), bound into the fresh tmpfs. Each tmpfs is prepared on a staging mount point
    while the host's directory is still visible, then moved onto it: the new ``/run`` on
    ``/tmp``, then the others under the new ``/run``.
    """
    run = os.path.realpath("/run")
    tmp = os.path.realpath("/tmp")
    var_run = os.path.realpath("/var/run")
    resolv = os.path.realpath("/etc/resolv.conf")
    keep = _outermost([os.path.realpath(k) for k in [*keep, resolv]
                      if os.path.isabs(k) and os.path.exists(k)])
    q = shlex.quote
    lines = ["set -e"]

    def fresh(target: str, stage: str, label: str, mode: str, dirs=(), size: str = "") -> None:
        opts = f"mode={mode},nosuid,nodev" + (f",size={size}" if size else "")
        lines.append(f"mount -n -t tmpfs -o {opts} {label} {q(stage)}")
        for name, dir_mode in dirs:
            lines.append(f"mkdir -m {dir_mode} {q(os.path.join(stage, name))}")
        for path in keep:
            rel = _under(path, target)
            if rel is None:
                continue
            inside = os.path.join(stage, rel)
            lines.append(f"mkdir -p {q(os.path.dirname(inside))}")
            lines.append(f"mkdir {q(inside)}" if os.path.isdir(path) else f": > {q(inside)}")
            lines.append(f"mount -n --bind {q(path)} {q(inside)}")
        lines.append(f"mount -n --move {q(stage)} {q(target)}")

    fresh(run, tmp, "pcloud-run", "0755", RUN_DIRS, "20%")
    stage = os.path.join(run, ".pcloud-stage")
    others = [(tmp, "pcloud-tmp", "1777")]
    if var_run != run and os.path.isdir(var_run) and _under(var_run, run) is None:
        others.append((var_run, "pcloud-varrun", "0755"))
    for target, label, mode in others:
        if target == run:
            continue
        lines.append(f"mkdir {q(stage)}")
        fresh(target, stage, label, mode)
        lines.append(f"rmdir {q(stage)}")
    lines.append('exec "$@"')
    return "\n".join(lines)


def wrap(argv: list[str], keep: list[str] = ()) -> list[str]:
    """``argv`` run after the mounts, in the namespace the caller's ``unshare`` made."""
    return ["/bin/sh", "-c", setup_script(keep), "pcloud-sandbox", *argv]


@functools.cache
def unavailable() -> str | None:
    """Why this host cannot give sandboxes their own mounts (None when it can).

    Tried once per process for real: a tmpfs over ``/tmp`` in a throwaway namespace.
    """
    if os.geteuid() != 0:
        return "not root"
    for tool in ("unshare", "mount"):
        if shutil.which(tool) is None:
            return f"{tool} not found"
    try:
        probe = subprocess.run(["unshare", "--mount", "--propagation", "private", "mount", "-t",
                                "tmpfs", "pcloud-probe", os.path.realpath("/tmp")],
                               stdin=subprocess.DEVNULL, capture_output=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unshare --mount failed: {exc}"
    if probe.returncode != 0:
        reason = probe.stderr.decode(errors="replace").strip().splitlines()
        return "unshare --mount failed: " + (reason[-1] if reason else f"rc {probe.returncode}")
    return None


@functools.cache
def warn_unavailable(reason: str) -> None:
    """One warning per process and reason."""
    log.warning("process sandboxes share this host's /run and /tmp (no mount namespace: %s)",
                reason)
