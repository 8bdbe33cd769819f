"""The main job (``make run``), run exactly as the Makefile does: it must show both recoveries."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_demo_shows_both_recoveries_and_leaves_nothing_behind(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "PCLOUD_BROKER_URL"}
    env["TMPDIR"] = str(tmp_path)
    result = subprocess.run([sys.executable, "-m", "pcloudsh.demo"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=240)
    out = result.stdout
    assert result.returncode == 0, out[-3000:] + result.stderr[-2000:]
    assert re.search(r"HTTP GET http://127\.0\.0\.1:\d+/ -> 200", out)
    assert re.search(r"RECOVERED: web/httpd running again \d+ ms after the kill", out)
    assert re.search(r"RECOVERED: assembly web detected failed after .* fenced after .* "
                     r"httpd running again after", out)
    assert "assembly fenced" in out
    assert "deployable webshop: running" in out
    assert "webshop  deployable stopped" in out
    assert "no pcloud process left behind" in out
    assert not [p for p in os.listdir("/proc") if p.isdigit() and _mentions(p, str(tmp_path))]


def _mentions(pid: str, marker: str) -> bool:
    try:
        return marker.encode() in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
