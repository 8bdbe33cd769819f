"""The main job (``make run``), run exactly as the Makefile does: it must show both recoveries."""

from __future__ import annotations

import contextlib
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_demo_shows_both_recoveries_and_leaves_nothing_behind(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "PCLOUD_BROKER_URL"}
    env["TMPDIR"] = str(tmp_path)
    with contextlib.ExitStack() as stack:
        # The example's web port taken: the demo must pick another before announcing any.
        with contextlib.suppress(OSError):
            busy = stack.enter_context(socket.socket())
            busy.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            busy.bind(("127.0.0.1", 8080))
            busy.listen()
        result = subprocess.run([sys.executable, "-m", "pcloudsh.demo"], cwd=ROOT, env=env,
                                capture_output=True, text=True, timeout=240)
    out = result.stdout
    assert result.returncode == 0, out[-3000:] + result.stderr[-2000:]
    moved = re.search(r"port 8080 of the example is busy on this host: the demo uses (\d+)", out)
    assert moved, out[:3000]
    assert "127.0.0.1:8080" not in out
    assert out.index(moved.group(0)) < out.index(f"web : 'httpd', the front end on "
                                                 f"127.0.0.1:{moved.group(1)}")
    assert re.search(r"\(from the kill: \d+ ms until pcloud noticed the failure, then \d+ ms "
                     r"from detection to running: the event's 'recovered in'\)", out)
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
