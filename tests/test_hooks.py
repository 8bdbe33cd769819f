"""Operator hooks (cpe_agent/hooks.py): the pure parts unit by unit, then real hook scripts
run by a real cped on a real deployable's events, one of them killed at its timeout."""

from __future__ import annotations

import time
from pathlib import Path

from lxml import etree
from signed_cpe import signed_cped
from support.cpe import deployable_xml, unique
from support.waiting import wait_until

from cpe_agent.hooks import (
    Hook,
    HookResult,
    HookRunner,
    hook_env,
    matches,
    parse_hooks,
    result_event,
    run_hook,
)
from pcloud.events import Event

EVENT = {"seq": "7", "time": "2026-12-07T10:00:00.000Z", "type": "resource_state_change",
         "deployable": "dep1", "assembly": "web", "resource": "httpd", "state": "failed",
         "reason": "process exited with signal 9", "incident": "abc"}


def script(path: Path, body: str) -> Path:
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return path


def test_parse_hooks_reads_filters_and_defaults_and_skips_bad_sections() -> None:
    hooks, errors = parse_hooks({
        "cpe": {"infrastructures": "process"},
        "hook notify": {"exec": "/usr/bin/logger -t 'pcloud hook'",
                        "types": "resource_state_change, escalation", "state": "failed"},
        "hook relative": {"exec": "notify.sh"},
        "hook typo": {"exec": "/bin/true", "deployables": "dep1"},
        "hook slow": {"exec": "/bin/true", "timeout": "0"},
    })
    assert [h.name for h in hooks] == ["notify"]
    notify = hooks[0]
    assert notify.argv == ("/usr/bin/logger", "-t", "pcloud hook")
    assert notify.types == {"resource_state_change", "escalation"}
    assert notify.state == {"failed"} and notify.deployable is None
    assert (notify.timeout, notify.concurrency) == (30.0, 4)
    assert len(errors) == 3
    assert "absolute path" in errors[0] and "unknown option deployables" in errors[1]


def test_matches_every_filter_and_never_a_hook_result() -> None:
    assert matches(Hook("all", ("/bin/true",)), EVENT)
    assert matches(Hook("f", ("/bin/true",), types=frozenset({"resource_state_change"}),
                        deployable=frozenset({"dep1", "dep2"}), state=frozenset({"failed"})),
                   EVENT)
    assert not matches(Hook("f", ("/bin/true",), state=frozenset({"running"})), EVENT)
    assert not matches(Hook("f", ("/bin/true",), assembly=frozenset({"db"})), EVENT)
    # a filter on a level the event does not have does not match it
    assert not matches(Hook("f", ("/bin/true",), resource=frozenset({"httpd"})),
                       {"type": "deployable_state_change", "deployable": "dep1"})
    assert not matches(Hook("all", ("/bin/true",)), dict(EVENT, type="hook_result"))


def test_hook_env_is_the_event_and_nothing_of_the_cpe(monkeypatch) -> None:
    monkeypatch.setenv("PCLOUD_BROKER_URL", "amqp://pcloud:secret@127.0.0.1:5672")
    env = hook_env(Hook("n", ("/bin/true",)), EVENT, "2026-12-07T10:00:01Z")
    assert env["PCLOUD_EVENT_TYPE"] == "resource_state_change"
    assert env["PCLOUD_EVENT_SEQ"] == "7" and env["PCLOUD_DEPLOYABLE"] == "dep1"
    assert (env["PCLOUD_ASSEMBLY"], env["PCLOUD_RESOURCE"]) == ("web", "httpd")
    assert env["PCLOUD_STATE"] == "failed" and env["PCLOUD_EVENT_INCIDENT"] == "abc"
    assert env["PCLOUD_HOOK"] == "n" and env["PCLOUD_HOOK_TIMESTAMP"] == "2026-12-07T10:00:01Z"
    assert not any("secret" in value for value in env.values())
    assert set(env) - {"PATH", "LANG"} == {k for k in env if k.startswith("PCLOUD_")}


def test_result_event_is_a_valid_event() -> None:
    result = HookResult("notify", "7", 3, 12, "no route to host")
    element = result_event(EVENT, result)
    element.set("seq", "8")
    element.set("time", "2026-12-07T10:00:01.000Z")
    event = Event.from_xml(element)      # schema-checked
    assert event.type.value == "hook_result" and event.resource == "httpd"
    assert event.extra["hook"] == "notify" and event.extra["exit_status"] == "3"
    assert event.extra["for_seq"] == "7" and event.reason.endswith("no route to host")


def test_run_hook_gives_stdin_and_env_and_reports(tmp_path: Path) -> None:
    out = tmp_path / "out"
    hook = Hook("rec", (str(script(tmp_path / "rec.sh",
                                   f'cat > {out}.xml; env > {out}.env; echo "done $1"; '
                                   "exit 3\n")), "arg one"))
    result = run_hook(hook, EVENT, b"<event seq='7'/>")
    assert (result.exit_status, result.first_line, result.timed_out) == (3, "done arg one",
                                                                         False)
    assert Path(f"{out}.xml").read_text() == "<event seq='7'/>"
    assert "PCLOUD_REASON=process exited with signal 9" in Path(f"{out}.env").read_text()
    missing = run_hook(Hook("gone", (str(tmp_path / "nothing"),)), EVENT, b"")
    assert missing.exit_status is None and missing.error


def test_run_hook_kills_the_whole_group_at_its_timeout(tmp_path: Path) -> None:
    pid_file = tmp_path / "child.pid"
    hook = Hook("slow", (str(script(tmp_path / "slow.sh",
                                    f"sleep 300 & echo $! > {pid_file}; wait\n")),),
                timeout=0.5)
    begin = time.monotonic()
    result = run_hook(hook, EVENT, b"<event/>")
    assert result.timed_out and result.exit_status is None
    assert time.monotonic() - begin < 5
    child = int(pid_file.read_text())
    wait_until(lambda: not _alive(child), 5, "the hook's child to die")


def test_runner_drops_runs_beyond_its_queue_and_never_blocks(tmp_path: Path,
                                                             monkeypatch) -> None:
    monkeypatch.setattr("cpe_agent.hooks.QUEUE_SIZE", 2)
    published: list[etree._Element] = []
    hook = Hook("slow", (str(script(tmp_path / "slow.sh", "sleep 1\n")),), concurrency=1)
    runner = HookRunner([hook], publish=published.append)
    try:
        begin = time.monotonic()
        for seq in range(10):
            runner.submit(etree.Element("event", seq=str(seq), type="fencing",
                                        deployable="dep1"))
        assert time.monotonic() - begin < 0.5
        assert runner.stats["slow"]["dropped"] >= 6
        wait_until(lambda: len(published) >= 1, 10, "a hook_result")
        assert published[0].get("exit_status") == "0"
    finally:
        runner.close()


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_cped_runs_hooks_on_real_events(broker, tmp_path: Path, monkeypatch) -> None:
    record = tmp_path / "record"
    pid_file = tmp_path / "slow.pid"
    rec = script(tmp_path / "record.sh", f'env > {record}.env; cat > {record}.xml; echo ok\n')
    slow = script(tmp_path / "slow.sh", f"sleep 300 & echo $! > {pid_file}; wait\n")
    conf = tmp_path / "pcloud.conf"
    conf.write_text(f"[hook record]\nexec = {rec}\ntypes = deployable_state_change\n"
                    "state = running\n\n"
                    f"[hook slow]\nexec = {slow}\ntypes = deployable_state_change\n"
                    "state = running\ntimeout = 1\n")
    monkeypatch.setenv("PCLOUD_CONFIG", str(conf))
    name = unique("hk")
    with signed_cped(tmp_path / "state", broker.url) as (_cped, client):
        client.call("deployable_start", deployable_xml(name))
        wait_until(lambda: Path(f"{record}.xml").exists() and Path(f"{record}.xml").stat()
                   .st_size, 60, "the record hook to run")
        event = etree.fromstring(Path(f"{record}.xml").read_bytes())
        assert (event.get("type"), event.get("state")) == ("deployable_state_change",
                                                           "running")
        env = dict(line.split("=", 1) for line in
                   Path(f"{record}.env").read_text().splitlines() if "=" in line)
        assert env["PCLOUD_DEPLOYABLE"] == name and env["PCLOUD_STATE"] == "running"
        assert env["PCLOUD_EVENT_SEQ"] == event.get("seq")
        assert not any(k in env for k in ("PCLOUD_BROKER_URL", "PCLOUD_BROKER_ADMIN",
                                          "PCLOUD_STATE_DIR", "PCLOUD_CONFIG"))

        def results() -> dict[str, etree._Element]:
            found = client.call("events_query", f'<events deployable="{name}"/>')
            return {e.get("hook"): e for e in found if e.get("type") == "hook_result"}

        done = wait_until(lambda: len(results()) == 2 and results(), 30, "two hook_results")
        assert done["record"].get("exit_status") == "0"
        assert done["record"].get("for_seq") == event.get("seq")
        assert done["record"].get("reason") == "hook record exited 0: ok"
        assert done["slow"].get("timed_out") == "true" and done["slow"].get("exit_status") is None
        assert 1000 <= int(done["slow"].get("duration_ms")) < 10000
        assert not _alive(int(pid_file.read_text()))
