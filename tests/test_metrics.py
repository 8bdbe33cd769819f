"""cped's Prometheus metrics (cpe_agent/metrics.py): what each event counts, unit by unit;
then a real cped scraped through a real failure (a process resource SIGKILLed, its DPE
SIGKILLed), parsed with prometheus_client's own parser."""

from __future__ import annotations

import json
import os
import signal
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from signed_cpe import signed_cped
from support.cpe import deployable_xml, service_pid, switched_on, unique
from support.waiting import wait_until

from cpe_agent.metrics import Counted, count
from cpe_agent.outlets import listen_address, parse_listen

BASE = {"seq": "5", "deployable": "dep1", "assembly": "web", "resource": "httpd"}


@pytest.mark.parametrize(("event", "counted"), [
    ({"type": "resource_state_change", "state": "failed", "previous": "running"},
     Counted(failure="resource")),
    ({"type": "resource_state_change", "state": "starting", "previous": "failed"},
     Counted(restart="resource")),
    ({"type": "resource_state_change", "state": "restarting", "previous": "failed"},
     Counted(restart="resource")),
    # the same restart going on: not counted twice
    ({"type": "resource_state_change", "state": "starting", "previous": "restarting"},
     Counted()),
    ({"type": "resource_state_change", "state": "running", "previous": "starting",
      "incident": "i1", "duration_ms": "153.250"}, Counted(mttr=0.15325)),
    ({"type": "assembly_state_change", "resource": "-", "state": "failed"},
     Counted(failure="assembly")),
    ({"type": "fencing", "resource": "-"}, Counted(fencing=True)),
    ({"type": "escalation", "escalated_to": "deployable"}, Counted(escalated_to="deployable")),
    ({"type": "escalation", "reason": "giving up"}, Counted(escalated_to="none")),
    ({"type": "config_error", "state": "failed"}, Counted()),
])
def test_count_says_which_counter_an_event_moves(event, counted) -> None:
    assert count({**BASE, **event}) == counted


def test_parse_listen_takes_host_port_or_port_and_refuses_the_rest() -> None:
    assert parse_listen("127.0.0.1:9464") == ("127.0.0.1", 9464)
    assert parse_listen("9464") == ("127.0.0.1", 9464)
    assert parse_listen("[::1]:9464") == ("::1", 9464)
    for bad in ("", "host:", "0", "70000", "127.0.0.1:http"):
        with pytest.raises(ValueError, match="listen"):
            parse_listen(bad)


def test_a_bad_listen_line_is_logged_and_leaves_that_outlet_off(tmp_path: Path, monkeypatch,
                                                                caplog) -> None:
    conf = tmp_path / "pcloud.conf"
    conf.write_text("[metrics]\nlisten = 127.0.0.1:nine\n[web]\nlisten = 8480\n")
    monkeypatch.setenv("PCLOUD_CONFIG", str(conf))
    assert listen_address("metrics") is None
    assert "[metrics]" in caplog.text and "'127.0.0.1:nine'" in caplog.text
    assert listen_address("web") == ("127.0.0.1", 8480)
    conf.write_text("[cpe]\n")
    assert listen_address("metrics") is None and listen_address("web") is None     # off by default


def scrape(port: int) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """Every sample of the endpoint: name -> {sorted labels: value}."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = \
                sample.value
    return samples


def value(samples, name: str, **labels: str) -> float:
    return samples.get(name, {}).get(tuple(sorted(labels.items())), 0.0)


@pytest.mark.slow
def test_metrics_follow_real_failures_and_a_dpe_restart(broker, tmp_path: Path,
                                                         monkeypatch) -> None:
    port = switched_on("metrics", tmp_path, monkeypatch)
    name = unique("mx")
    state = tmp_path / "state"
    with signed_cped(state, broker.url) as (_cped, client):
        client.call("deployable_start", deployable_xml(name))
        wait_until(lambda: client.listing().get(name) == "running", 120,
                   f"{name} to run")
        before = scrape(port)
        assert value(before, "pcloud_deployables", state="running") == 1
        assert value(before, "pcloud_resources", deployable=name, state="running") == 1
        assert value(before, "pcloud_assemblies", deployable=name, state="running") == 1
        assert value(before, "pcloud_bus_connected") == 1
        assert value(before, "pcloud_dpe_up", deployable=name) == 1
        assert value(before, "pcloud_failures_total", deployable=name, level="resource") == 0
        assert value(before, "pcloud_mttr_seconds_count", deployable=name) == 0

        os.kill(service_pid(state, name, "a1", "s1"), signal.SIGKILL)

        def recovered():
            events = client.call("events_query", f'<events deployable="{name}" limit="1000"/>')
            return [e for e in events if e.get("resource") == "s1"
                    and e.get("state") == "running" and e.get("duration_ms")]

        closing = wait_until(recovered, 120, "the killed resource's recovery event")[0]
        after = wait_until(lambda: (s := scrape(port)) and value(
            s, "pcloud_mttr_seconds_count", deployable=name) >= 1 and s, 30,
            "the MTTR to be observed")
        assert value(after, "pcloud_failures_total", deployable=name, level="resource") >= 1
        assert value(after, "pcloud_restarts_total", deployable=name, level="resource") >= 1
        mttr = float(closing.get("duration_ms")) / 1000.0
        assert value(after, "pcloud_mttr_seconds_sum", deployable=name) == pytest.approx(
            mttr, abs=1e-3)
        assert value(after, "pcloud_mttr_seconds_bucket", deployable=name, le="+Inf") == 1
        assert value(after, "pcloud_fencings_total", deployable=name) == 0
        assert "pcloud_dpe_heartbeat_lateness_seconds" in after
        wait_until(lambda: value(scrape(port), "pcloud_dpe_heartbeat_delay_seconds_count",
                                 deployable=name) >= 1, 30, "a DPE heartbeat to be observed")

        # the whole sandbox killed: the assembly fails and is fenced before its restart
        sandbox = json.loads((state / "dpe" / name / "assemblies" / "a1" / "sandbox.pid")
                             .read_text())["pid"]
        os.killpg(int(sandbox), signal.SIGKILL)
        fenced = wait_until(lambda: (s := scrape(port)) and value(
            s, "pcloud_fencings_total", deployable=name) >= 1 and value(
            s, "pcloud_assemblies", deployable=name, state="running") == 1 and s, 120,
            "the fencing to be counted and the assembly to run again")
        assert value(fenced, "pcloud_failures_total", deployable=name, level="assembly") >= 1
        assert value(fenced, "pcloud_restarts_total", deployable=name, level="assembly") >= 1

        dped = int((state / "dpe" / name / "dped.pid").read_text().split()[0])
        os.kill(dped, signal.SIGKILL)
        wait_until(lambda: value(scrape(port), "pcloud_dpe_restarts_total",
                                 deployable=name) == 1, 60, "the DPE restart to be counted")
        wait_until(lambda: value(scrape(port), "pcloud_dpe_up", deployable=name) == 1, 60,
                   "the new DPE")
