"""The read-only web console (cpe_agent/web.py, web_model.py): incidents folded from events,
unit by unit; then a real cped with ``[web] listen`` watched in a real headless Chromium
(Debian's, driven by playwright) while a deployable starts and a resource is SIGKILLed."""

from __future__ import annotations

import json
import os
import shutil
import signal
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from lxml import etree
from signed_cpe import signed_cped
from support.cpe import deployable_xml, service_pid, switched_on, unique
from support.waiting import wait_until

from cpe_agent.web import ConsoleFeed
from cpe_agent.web_model import ConsoleModel, epoch
from pcloud.bus import BusError, Message, MethodError

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"]
DOCS_SCREENSHOT = Path(__file__).resolve().parent.parent / "docs" / "console.png"


def ev(seq: int, time: str, **attrs: str) -> dict[str, str]:
    return {"seq": str(seq), "time": f"2026-12-07T10:00:{time}Z", "deployable": "d",
            "assembly": "a", "resource": "r", **attrs}


def test_a_resource_incident_runs_from_detection_to_running() -> None:
    model = ConsoleModel()
    model.set_status(etree.fromstring(
        '<deployable name="d" state="running"><assembly name="a" state="running">'
        '<resource name="r" state="running" fail_count="0"/></assembly></deployable>'))
    opened = model.fold(ev(1, "00.000", type="resource_state_change", state="failed",
                           incident="i1", reason="process exited with signal 9"))
    assert [i.id for i in opened] == ["i1"]
    assert model.deployables["d"]["assemblies"][0]["resources"][0]["state"] == "failed"
    model.fold(ev(2, "00.040", type="resource_state_change", state="starting",
                  previous="failed"))
    closed = model.fold(ev(3, "00.150", type="resource_state_change", state="running",
                           incident="i1", detected_at="2026-12-07T09:59:59.990Z",
                           recovered_at="2026-12-07T10:00:00.140Z", duration_ms="150.000"))
    incident = closed[0].to_json()
    assert [s["phase"] for s in incident["steps"]] == ["detected", "starting", "running"]
    # measured from the agent's detection time, not from the DPE's event
    assert [s["after_ms"] for s in incident["steps"]] == [0.0, 50.0, 150.0]
    assert incident["duration_ms"] == 150.0
    assert incident["recovered_at"] == epoch("2026-12-07T10:00:00.140Z")
    assert model.deployables["d"]["assemblies"][0]["resources"][0]["state"] == "running"
    # the same event again (history and live stream overlap) changes nothing
    assert model.fold(ev(3, "00.150", type="resource_state_change", state="running")) is None


def test_an_assembly_incident_shows_its_fencing_and_a_late_close_stands_alone() -> None:
    model = ConsoleModel()
    model.fold(ev(1, "01.000", type="assembly_state_change", resource="-", state="failed",
                  incident="i2", reason="missed heartbeats"))
    model.fold(ev(2, "01.100", type="fencing", resource="-", reason="fenced before restart"))
    model.fold(ev(3, "01.100", type="assembly_state_change", resource="-",
                  state="restarting", reason="fenced"))
    model.fold(ev(4, "03.000", type="assembly_state_change", resource="-", state="running",
                  incident="i2", duration_ms="2000.000",
                  recovered_at="2026-12-07T10:00:03.000Z"))
    steps = model.incidents["i2"].steps
    assert [s["phase"] for s in steps] == ["detected", "fenced", "restarting", "running"]
    assert steps[1]["after_ms"] == 100.0
    # a recovery whose failure is older than the history read still gives an MTTR point
    alone = model.fold(ev(9, "09.000", type="resource_state_change", state="running",
                          incident="i3", detected_at="2026-12-07T10:00:08.500Z",
                          recovered_at="2026-12-07T10:00:09.000Z", duration_ms="500.000"))
    assert alone[0].duration_ms == 500.0 and alone[0].steps[-1]["after_ms"] == 500.0
    assert model.snapshot()["events"][-1]["seq"] == "9"


def test_feed_takes_an_event_only_from_who_may_send_it() -> None:
    """The deployable's DPE or the CPE; not another DPE, a person, an unsigned or a
    malformed message (the broker refuses most of these already: this is the second lock)."""
    sent: list[dict] = []
    feed = ConsoleFeed("amqp://127.0.0.1:1", "pcloud", sent.append)
    body = ('<event seq="1" time="2026-12-07T10:00:00.000Z" type="resource_state_change" '
            'deployable="d" assembly="a" resource="r" state="failed" incident="i1"/>')
    for sender in ("dpe.other", "alice", None):
        feed._on_event(Message(body=body, user_id=sender))
    feed._on_event(Message(body="<!DOCTYPE x [<!ENTITY e 'x'>]><event/>", user_id="dpe.d"))
    feed._on_event(Message(body=body.replace('seq="1"', 'seq="x"'), user_id="dpe.d"))
    assert sent == [] and feed.snapshot()["events"] == []
    feed._on_event(Message(body=body, user_id="dpe.d"))
    assert [m["kind"] for m in sent] == ["event", "incident"]
    feed._on_event(Message(body=body.replace('seq="1"', 'seq="2"').replace(
        'type="resource_state_change"', 'type="config_error"'), user_id="pcloud"))
    assert [e["seq"] for e in feed.snapshot()["events"]] == ["1", "2"]


@pytest.mark.slow
def test_console_shows_a_deployable_running_and_a_live_incident(broker, tmp_path: Path,
                                                                 monkeypatch) -> None:
    if not os.access(CHROMIUM, os.X_OK):
        pytest.skip("Debian's chromium is not installed (scripts/setup-host --tests)")
    from playwright.sync_api import sync_playwright

    port = switched_on("web", tmp_path, monkeypatch)
    name = unique("web")
    state = tmp_path / "state"
    with signed_cped(state, broker.url) as (_cped, client), sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.goto(f"http://127.0.0.1:{port}/")
            rebound = urllib.request.Request(f"http://127.0.0.1:{port}/api/state",
                                             headers={"Host": f"evil.example:{port}"})
            with pytest.raises(urllib.error.HTTPError, match="421"):
                urllib.request.urlopen(rebound, timeout=10)
            page.wait_for_selector("#link.up", timeout=60_000)
            client.call("deployable_start", deployable_xml(name, {"web": ["httpd", "worker"]}))
            page.wait_for_selector(f'.deployable[data-deployable="{name}"]'
                                   '[data-state="running"]', timeout=180_000)
            assert page.locator(f'.deployable[data-deployable="{name}"] '
                                'tr[data-resource="web/httpd"][data-state="running"]').count() == 1

            os.kill(service_pid(state, name, "web", "httpd"), signal.SIGKILL)
            row = (f'tr[data-incident][data-component="{name}/web/httpd"]'
                   ':not([data-duration-ms=""])')
            page.wait_for_selector(row, timeout=180_000)     # no reload: pushed live
            duration = float(page.get_attribute(row, "data-duration-ms"))
            events = client.call("events_query", f'<events deployable="{name}" limit="1000"/>')
            closing = [e for e in events if e.get("resource") == "httpd"
                       and e.get("state") == "running" and e.get("duration_ms")]
            assert closing and float(closing[0].get("duration_ms")) == duration
            timeline = page.inner_text(f"{row} .timeline")
            assert timeline.startswith("detected") and "running" in timeline
            page.wait_for_selector("#mttr .uplot canvas", timeout=30_000)
            assert page.locator("#events li").count() >= 5
            # the status asked after the events: the failure is counted
            page.wait_for_selector(f'.deployable[data-deployable="{name}"] '
                                   'tr[data-resource="web/httpd"][data-state="running"]'
                                   '[data-fail-count="1"]', timeout=60_000)
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/state",
                                        timeout=10) as answer:
                assert answer.headers["X-Content-Type-Options"] == "nosniff"
                snapshot = json.load(answer)
            assert [d["name"] for d in snapshot["deployables"]] == [name]
            shot = tmp_path / "console.png"
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 10_000
            if os.environ.get("PCLOUD_UPDATE_SCREENSHOT"):
                shutil.copyfile(shot, DOCS_SCREENSHOT)
            if broker.controllable:
                # the console's own connection survives a broker restart: a refusal the CPE
                # publishes afterwards (a config_error) reaches the page live
                broker.restart()
                ghost = unique("ghost")

                def refusal_shown() -> bool:
                    with pytest.raises((MethodError, BusError)):
                        client.call("deployable_stop", f'<deployable name="{ghost}"/>')
                    return page.locator("#events li", has_text=ghost).count() > 0

                wait_until(refusal_shown, 120, "a config_error after the restart", step=2.0)
                page.wait_for_selector("#link.up", timeout=10_000)
        finally:
            browser.close()
