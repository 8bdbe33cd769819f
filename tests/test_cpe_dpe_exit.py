"""The CPE honours dped's named exit codes (pcloud.exitcodes), with real cped and dped
processes on the real broker.

A wrapper stands in for ``dped`` (``cped --dped-command``): it counts its starts and, when the
test asks, exits like dped does on a configuration that can never start (``EXIT_CONFIG``,
its error on stderr) or crashes once (exit 1); otherwise it execs the real ``dped``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest
import support.cpe
from support.cpe import (
    BIN,
    AmqpClient,
    CpedProcess,
    EventWatcher,
    deployable_xml,
    running_cped,
    unique,
)
from support.waiting import wait_until

from pcloud.exitcodes import EXIT_CONFIG

WRAPPER = """\
import os, sys
argv = sys.argv[1:]
name = os.path.basename(os.path.dirname(argv[argv.index("--deployable") + 1]))
control = os.path.join({control!r}, name)
with open(control + ".spawns", "a") as spawns:
    spawns.write(" ".join(argv) + "\\n")
if os.path.exists(control + ".config"):
    print("dped: driver 'nowhere' is not available on this host", file=sys.stderr)
    sys.exit({config})
if os.path.exists(control + ".crash"):
    os.unlink(control + ".crash")
    sys.exit(1)
os.execv({dped!r}, [{dped!r}, *argv])
"""


class Control:
    """What the wrapper does for one deployable, and how often it was started."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def set(self, name: str, mode: str, on: bool = True) -> None:
        path = self.directory / f"{name}.{mode}"
        if on:
            path.touch()
        else:
            path.unlink(missing_ok=True)

    def spawns(self, name: str) -> list[list[str]]:
        try:
            text = (self.directory / f"{name}.spawns").read_text()
        except FileNotFoundError:
            return []
        return [line.split() for line in text.splitlines()]


@pytest.fixture
def cpe(broker, tmp_path: Path, monkeypatch):
    control = Control(tmp_path / "control")
    control.directory.mkdir()
    wrapper = tmp_path / "dped_wrapper.py"
    wrapper.write_text(WRAPPER.format(control=str(control.directory), config=EXIT_CONFIG,
                                      dped=str(BIN / "dped")))

    class WrappedCped(CpedProcess):
        def start(self, client: AmqpClient) -> None:
            self.state_dir.mkdir(parents=True, exist_ok=True)
            with open(self.log, "ab") as log:
                self.proc = support.cpe.subprocess.Popen(
                    [str(BIN / "cped"), "--foreground", "--state-dir", str(self.state_dir),
                     "--dped-command", f"{sys.executable} {wrapper}"],
                    stdout=log, stderr=log, env=self.env())
            wait_until(lambda: self._answers(client), 30, "cped to answer deployables_list")

    monkeypatch.setattr(support.cpe, "CpedProcess", WrappedCped)
    watcher = EventWatcher(broker.url)
    with running_cped(tmp_path / "state", broker.url) as (cped, client):
        yield cped, client, watcher, control
    watcher.close()


def _seq_floor(argv: list[str]) -> int:
    return int(argv[argv.index("--seq-floor") + 1])


def test_a_configuration_that_cannot_start_fails_with_its_reason_and_is_not_restarted(
        cpe) -> None:
    cped, client, watcher, control = cpe
    name = unique("dep")
    control.set(name, "config")
    client.call("deployable_start", deployable_xml(name))
    failed = watcher.wait_for(lambda e: e.get("deployable") == name
                              and e.get("type") == "deployable_state_change"
                              and e.get("state") == "failed", 30, "deployable failed")
    reason = failed.get("reason")
    assert "exit 2 (configuration error)" in reason, reason
    assert "driver 'nowhere' is not available" in reason, reason
    assert failed.get("previous") == "starting"
    wait_until(lambda: client.listing()[name] == "failed", 10, f"{name} listed failed")
    stored = [e for e in client.events(name) if e.get("type") == "deployable_state_change"]
    assert [(e.get("state"), e.get("seq")) for e in stored] == [("failed", failed.get("seq"))]
    # A crash would be restarted after 0, 1 and 2 s: four seconds show there is no loop.
    time.sleep(4.0)
    assert len(control.spawns(name)) == 1
    assert client.listing()[name] == "failed"

    # Stopping it needs no DPE (none can start); a start after the fix runs it, and the
    # new DPE numbers its events above the CPE's (its --seq-floor).
    control.set(name, "config", on=False)
    assert client.call("deployable_stop", f'<deployable name="{name}"/>').get("state") == \
        "stopping"
    wait_until(lambda: client.listing()[name] == "stopped", 15, f"{name} stopped")
    assert len(control.spawns(name)) == 1
    client.call("deployable_start", deployable_xml(name))
    wait_until(lambda: client.status(name).get("state") == "running", 60, f"{name} running")
    spawns = control.spawns(name)
    assert len(spawns) == 2
    assert _seq_floor(spawns[1]) >= int(failed.get("seq"))
    seqs = [int(e.get("seq")) for e in client.events(name)]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    assert max(seqs) > int(failed.get("seq"))


def test_a_new_document_is_tried_again_after_a_configuration_failure(cpe) -> None:
    cped, client, watcher, control = cpe
    name = unique("dep")
    control.set(name, "config")
    client.call("deployable_start", deployable_xml(name))
    wait_until(lambda: client.listing()[name] == "failed", 30, f"{name} failed")
    assert len(control.spawns(name)) == 1
    control.set(name, "config", on=False)
    client.call("deployable_reload", deployable_xml(name, {"a1": ["s1", "s2"]}))
    wait_until(lambda: client.status(name).get("state") == "running", 60, f"{name} running")
    assert len(control.spawns(name)) == 2
    assert sorted(r.get("name") for r in client.status(name).iter("resource")) == ["s1", "s2"]


def test_a_dpe_that_crashes_is_still_restarted(cpe) -> None:
    cped, client, watcher, control = cpe
    name = unique("dep")
    control.set(name, "crash")           # exit 1 once: a crash, not a configuration error
    client.call("deployable_start", deployable_xml(name))
    wait_until(lambda: client.status(name).get("state") == "running", 60, f"{name} running")
    assert len(control.spawns(name)) == 2
    assert not [e for e in client.events(name) if e.get("state") == "failed"]
