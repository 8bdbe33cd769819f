"""pcloudsh one-shot commands against a real cped: the seed flow from catalogue to events."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from support.cpe import deployable_xml, running_cped
from support.waiting import wait_until

BIN = Path(sys.executable).parent


def test_seed_flow_start_status_events_stop(broker, tmp_path: Path) -> None:
    state = tmp_path / "state"
    env = dict(os.environ, PCLOUD_STATE_DIR=str(state), PCLOUD_BROKER_URL=broker.url)

    def sh(*args: str) -> str:
        result = subprocess.run([str(BIN / "pcloudsh"), *args], capture_output=True,
                                text=True, env=env, timeout=60)
        assert result.returncode == 0, result.stderr
        return result.stdout

    def fails(*args: str) -> str:
        result = subprocess.run([str(BIN / "pcloudsh"), *args], capture_output=True,
                                text=True, env=env, timeout=60)
        assert result.returncode == 1, result
        return result.stderr

    from_file = tmp_path / "filedep.xml"
    from_file.write_text(deployable_xml("filedep"))
    with running_cped(state, broker.url):
        assert sh("deployable_start", str(from_file)).strip() == "deployable filedep: starting"
        assert "(to change it: deployable_reload " in fails("deployable_start", str(from_file))
        sh("assembly_create", "assy1", "debian-12", "x86_64")
        sh("assembly_resource_add", "dummy", "dummy", "assy1")
        sh("assembly_clone", "assy1", "assy2")
        sh("deployable_create", "shdep")
        sh("deployable_assembly_add", "shdep", "assy1")
        sh("deployable_assembly_add", "shdep", "assy2")
        assert sh("deployable_start", "shdep").strip() == "deployable shdep: starting"
        wait_until(lambda: json.loads(sh("--json", "deployable_status", "shdep"))["state"]
                   == "running", 60, "shdep running")
        status = json.loads(sh("--json", "deployable_status", "shdep"))
        assert {(c["assembly"], c["resource"], c["state"]) for c in status["components"]} == {
            ("assy1", "-", "running"), ("assy1", "dummy", "running"),
            ("assy2", "-", "running"), ("assy2", "dummy", "running")}
        table = sh("deployable_status", "shdep")
        assert table.splitlines()[0] == "deployable shdep: running"
        assert "ASSEMBLY  RESOURCE  STATE    FAILS" in table
        listed = json.loads(sh("--json", "deployable_list"))
        assert [(d["name"], d["state"]) for d in listed] == [("filedep", "running"),
                                                             ("shdep", "running")]
        history = sh("events", "shdep", "--since", "0")
        assert "shdep  deployable running" in history
        only = sh("events", "shdep", "--since", "0", "--type", "deployable_state_change")
        assert only and all("deployable" in line for line in only.splitlines())
        assert len(sh("events", "shdep", "--since", "0", "--count", "3").splitlines()) == 3
        as_json = subprocess.run([str(BIN / "pcloudsh"), "--json", "events", "shdep", "--since",
                                  "0"], capture_output=True, text=True, env=env, timeout=60)
        assert as_json.returncode == 0 and as_json.stderr == ""
        stored = json.loads(as_json.stdout)
        assert [e["seq"] for e in stored] == list(range(1, len(stored) + 1))
        assert all(isinstance(e.get("fail_count", 0), int) for e in stored)
        assert all(isinstance(e["deployable"], str) for e in stored)
        for args, words in ((("events", "nosuch"), "no deployable named 'nosuch'"),
                            (("events", "--type", "bogus"), "unknown event type 'bogus'")):
            refused = subprocess.run([str(BIN / "pcloudsh"), *args], capture_output=True,
                                     text=True, env=env, timeout=60)
            assert refused.returncode == 1 and words in refused.stderr
            assert refused.stderr.count("\n") == 1

        live = subprocess.Popen([str(BIN / "pcloudsh"), "events", "shdep", "--type",
                                 "deployable_state_change", "--count", "2", "--timeout", "60"],
                                stdout=subprocess.PIPE, text=True, env=env)
        try:
            assert live.stdout is not None
            assert "watching events of shdep" in live.stdout.readline()
            assert sh("deployable_stop", "shdep").strip() == "deployable shdep: stopping"
            out, _ = live.communicate(timeout=60)
        finally:
            live.kill()
            live.wait()
        assert "shdep  deployable stopping" in out and "shdep  deployable stopped" in out
        result = subprocess.run([str(BIN / "pcloudsh"), "deployable_status", "nosuch"],
                                capture_output=True, text=True, env=env, timeout=60)
        assert result.returncode == 1
        assert result.stderr.startswith("pcloudsh: deployable_status: unknown_deployable: ")
        assert sh("deployable_stop", "shdep").strip() == "deployable shdep: already stopped"
        sh("deployable_stop", "filedep")
        wait_until(lambda: json.loads(sh("--json", "deployable_status", "filedep"))["state"]
                   == "stopped", 60, "filedep stopped")
    # cped gone: said at once, and the deployables started from a file are still listed
    listing = subprocess.run([str(BIN / "pcloudsh"), "--json", "deployable_list"],
                             capture_output=True, text=True, env=env, timeout=60)
    assert listing.returncode == 1
    assert listing.stderr.startswith("pcloudsh: deployable_list: CPE not reachable, states "
                                     f"unknown: cped is not running on {state}")
    assert [(d["name"], d["state"]) for d in json.loads(listing.stdout)] == [
        ("filedep", "unknown"), ("shdep", "unknown")]
