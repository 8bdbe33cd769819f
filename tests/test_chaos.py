"""The chaos soak (bench/chaos.py), short: about 60 s of random faults with every invariant held.

The soak starts a private broker node of its own (it kills, restarts and freezes it), so this
test does not use the session's broker; it runs the script as a subprocess and reads its exit
status and report. The ten-minute soak is ``.venv/bin/python bench/chaos.py --duration 600``.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from pcloud import broker

ROOT = Path(__file__).resolve().parent.parent
DURATION = 60


@pytest.mark.slow
def test_chaos_soak_holds_every_invariant() -> None:
    if not (broker.RABBIT_BIN / "rabbitmq-server").exists():
        pytest.skip(f"RabbitMQ is not installed ({broker.RABBIT_BIN})")
    seed = random.randrange(1 << 30)
    env = {k: v for k, v in os.environ.items()
           if k not in ("PCLOUD_BROKER_URL", "PCLOUD_BROKER_ADMIN", "PCLOUD_STATE_DIR")}
    run = subprocess.run([sys.executable, str(ROOT / "bench" / "chaos.py"), "--duration",
                          str(DURATION), "--seed", str(seed), "--deployables", "2"],
                         capture_output=True, text=True, env=env, timeout=DURATION + 600)
    report = run.stdout + run.stderr
    print(report)
    assert run.returncode == 0, f"chaos soak (seed {seed}) exit {run.returncode}:\n{report}"
    assert "ALL INVARIANTS HELD" in run.stdout, report
