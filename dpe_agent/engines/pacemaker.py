"""Pacemaker's own scheduler (crm_simulate) as a transition computer: the reference rules."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from datetime import UTC, datetime

from lxml import etree

from dpe_agent.engines import EngineError
from dpe_agent.graph import TransitionGraph

CRM_SIMULATE = "crm_simulate"
INSTALL_HINT = "apt-get install pacemaker-cli-utils"


def crm_simulate_path() -> str | None:
    """Where crm_simulate is, or None (it lives in /usr/sbin, often not on a user's PATH)."""
    found = shutil.which(CRM_SIMULATE)
    if found:
        return found
    for candidate in ("/usr/sbin/crm_simulate", "/usr/local/sbin/crm_simulate"):
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def iso(now: datetime) -> str:
    """ISO 8601 in UTC, the only form crm_simulate's ``-t`` accepts."""
    if now.tzinfo is None:
        now = now.replace(tzinfo=UTC)
    return now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class PacemakerEngine:
    name = "pacemaker"

    def __init__(self, timeout: float = 300.0) -> None:
        self.timeout = timeout

    def compute(self, cib: etree._Element, now: datetime) -> TransitionGraph:
        exe = crm_simulate_path()
        if exe is None:
            raise EngineError(f"crm_simulate not installed ({INSTALL_HINT})")
        with tempfile.TemporaryDirectory(prefix="pcloud-crm-") as tmp:
            cib_path = os.path.join(tmp, "cib.xml")
            graph_path = os.path.join(tmp, "graph.xml")
            with open(cib_path, "wb") as out:
                out.write(etree.tostring(cib, xml_declaration=True, encoding="UTF-8"))
            cmd = [exe, "-Q", "-x", cib_path, "-R", "-G", graph_path, "-t", iso(now)]
            try:
                done = subprocess.run(cmd, capture_output=True, text=True, timeout=self.timeout,
                                      env={**os.environ, "LC_ALL": "C"})
            except subprocess.TimeoutExpired as exc:
                raise EngineError(f"crm_simulate took more than {self.timeout:g}s") from exc
            if done.returncode != 0 or not os.path.exists(graph_path):
                err = " ".join((done.stderr or done.stdout).split()) or "no output"
                raise EngineError(f"crm_simulate failed (exit {done.returncode}): {err}")
            with open(graph_path, "rb") as src:
                return TransitionGraph.from_xml(src.read())
