"""Debian packages installed into an image after it was built: what a template's software needs.

The host resolves and downloads (``apt-get install --download-only`` against the image's own
dpkg status, so only what the image lacks is fetched, without Recommends); libguestfs uploads
the packages and runs ``dpkg -i`` inside the image, with a ``policy-rc.d`` that keeps their
services from starting there, then disables the services they enabled at boot (the guest
agent starts them through their resources, in the deployable's order). The host's
apt sources must serve the image's release: the JEOS is Debian 12, as the hosts are.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Iterable
from pathlib import Path

from pcloudsh.guestfs_support import open_disk
from pcloudsh.image_catalogue import ImageError, Progress, Steps

DEB_DIR = "/var/cache/pcloud-debs"
POLICY_RC = "/usr/sbin/policy-rc.d"
#: dpkg in the image: no questions, no service started during the install
DPKG = ("DEBIAN_FRONTEND=noninteractive PATH=/usr/sbin:/usr/bin:/sbin:/bin "
        f"dpkg -i --force-confdef --force-confold {DEB_DIR}/*.deb 2>&1")


#: the services those packages enable at boot are disabled: their resources start them, and
#: a copy started by the guest's init would be found running, outside pcloud's order
DISABLE_UNITS = ("for unit in $(dpkg -L {packages} | "
                 r"grep -E '^/lib/systemd/system/[^/@]+\.(service|socket)$'); do "
                 "name=${{unit##*/}}; systemctl disable --quiet \"$name\" 2>/dev/null "
                 "&& echo \"$name\"; done; true")


def installed(g, packages: Iterable[str]) -> list[str]:
    """Which of ``packages`` the mounted image has installed."""
    status = g.read_file("/var/lib/dpkg/status").decode(errors="replace")
    have = set()
    for stanza in status.split("\n\n"):
        fields = dict(line.split(": ", 1) for line in stanza.splitlines() if ": " in line
                      and not line.startswith(" "))
        if fields.get("Status", "").endswith(" installed"):
            have.add(fields.get("Package"))
    return [p for p in packages if p in have]


def _download(status: Path, packages: list[str], into: Path, steps: Steps) -> list[Path]:
    """The .debs ``packages`` need on a system whose dpkg status is ``status``."""
    (into / "partial").mkdir(parents=True, exist_ok=True)
    argv = ["apt-get", "-q", "-y", "--download-only", "-o", f"Dir::State::status={status}",
            "-o", f"Dir::Cache::archives={into}", "-o", "APT::Install-Recommends=false",
            "-o", "Debug::NoLocking=1", "install", *packages]
    done = subprocess.run(argv, capture_output=True, text=True)
    if done.returncode != 0:
        errors = [line for line in done.stderr.splitlines() if line.startswith("E:")]
        raise ImageError(f"apt-get could not fetch {' '.join(packages)}: "
                         f"{(errors or done.stderr.splitlines() or ['no output'])[-1]} "
                         "(is the Debian archive reachable, and 'apt-get update' done?)")
    debs = sorted(into.glob("*.deb"))
    steps.say(f"downloaded {len(debs)} packages ("
              f"{sum(d.stat().st_size for d in debs) // 1024} KiB)")
    return debs


def install_packages(disk: Path, packages: Iterable[str],
                     progress: Progress | None = None) -> list[str]:
    """Install ``packages`` (and what they depend on) into the image ``disk``.

    Returns the packages that were missing (none: nothing was done). ImageError says what
    failed: the download (apt's message) or the install (dpkg's last lines).
    """
    wanted = list(dict.fromkeys(packages))
    if not wanted:
        return []
    if shutil.which("apt-get") is None:
        raise ImageError("installing packages into an image needs apt-get on this host")
    steps = Steps(progress)
    with tempfile.TemporaryDirectory(prefix="pcloud-debs-") as tmp:
        work = Path(tmp)
        steps.say(f"libguestfs: which of {', '.join(wanted)} the image lacks")
        with open_disk(disk, readonly=True) as g:
            missing = [p for p in wanted if p not in installed(g, wanted)]
            if missing:
                g.download("/var/lib/dpkg/status", str(work / "status"))
        if not missing:
            steps.say("all installed already")
            return []
        steps.say(f"apt-get: fetching {', '.join(missing)} and their dependencies")
        debs = _download(work / "status", missing, work / "debs", steps)
        steps.say(f"libguestfs: dpkg -i of {len(debs)} packages inside the image")
        with open_disk(disk) as g:
            g.mkdir_p(DEB_DIR)
            for deb in debs:
                g.upload(str(deb), f"{DEB_DIR}/{deb.name}")
            g.write(POLICY_RC, b"#!/bin/sh\nexit 101\n")
            g.chmod(0o755, POLICY_RC)
            try:
                output = g.sh(f"{DPKG}; echo rc=$?")
            finally:
                g.rm_f(POLICY_RC)
                g.rm_rf(DEB_DIR)
            lines = output.strip().splitlines()
            if not lines or lines[-1] != "rc=0":
                raise ImageError(f"dpkg -i of {', '.join(missing)} failed in the image: "
                                 + " | ".join(lines[-4:-1] or lines))
            still = [p for p in missing if p not in installed(g, missing)]
            if still:
                raise ImageError(f"dpkg left {', '.join(still)} not installed in the image")
            disabled = g.sh(DISABLE_UNITS.format(packages=" ".join(missing))).split()
        if disabled:
            steps.say(f"disabled at boot: {', '.join(disabled)} (pcloud starts them)")
        steps.say(f"installed {', '.join(missing)}")
        return missing
