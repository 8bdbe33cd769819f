"""The CPE serves its queue on a pool: a frozen DPE holds up only the requests that wait
for it (DPE calls time out after seconds), not the other methods."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from support.cpe import deployable_xml, running_cped, unique
from support.waiting import wait_until


def test_a_frozen_dpe_does_not_hold_up_other_requests(broker, tmp_path: Path) -> None:
    with running_cped(tmp_path / "state", broker.url) as (cped, client):
        name = unique("dep")
        client.call("deployable_start", deployable_xml(name))
        wait_until(lambda: client.status(name).get("state") == "running", 60, f"{name} running")
        dpe = int((cped.state_dir / "dpe" / name / "dped.pid").read_text())
        os.kill(dpe, signal.SIGSTOP)
        try:
            ref = f'<deployable name="{name}"/>'
            status = client.send_raw("pcloud.cpe", "deployable_status", ref)
            listing = client.send_raw("pcloud.cpe", "deployables_list", "<deployables/>")
            answers = []
            for _ in range(2):
                msg = client.receiver.receive(timeout=30)
                client.receiver.accept()
                answers.append(str(msg.correlation_id))
            # the status waits for the frozen DPE; the list, sent after it, must not
            assert answers == [listing, status]
        finally:
            os.kill(dpe, signal.SIGCONT)
