"""ocf (real Dummy agent), lsb status mapping and the systemd refusal."""

from __future__ import annotations

import os

import pytest

from guest_agent.resources import make_resource
from guest_agent.resources.base import ResourceError, ResourceSpec
from guest_agent.resources.lsb import map_action, map_status
from guest_agent.resources.ocf import clear_rsctmp_after_reboot
from guest_agent.resources.systemd import systemd_running

DUMMY = "/usr/lib/ocf/resource.d/heartbeat/Dummy"


@pytest.mark.skipif(not os.access(DUMMY, os.X_OK), reason="resource-agents not installed")
def test_dummy_lifecycle_and_failed_monitor(reaper, tmp_path):
    res = make_resource(ResourceSpec("d1", "ocf", provider="heartbeat", type="Dummy"), reaper,
                        str(tmp_path))
    assert res.monitor(10).rc == 7
    assert res.start(10).rc == 0
    assert res.monitor(10).rc == 0
    state = tmp_path / "rsctmp" / "Dummy-d1.state"
    assert state.exists()
    state.unlink()
    assert res.monitor(10).rc == 7
    assert res.start(10).rc == 0
    assert res.stop(10).rc == 0
    assert res.stop(10).rc == 0


@pytest.mark.skipif(not os.access(DUMMY, os.X_OK), reason="resource-agents not installed")
def test_ocf_parameters_reach_the_agent(reaper, tmp_path):
    state = tmp_path / "custom.state"
    res = make_resource(ResourceSpec("d2", "ocf", type="Dummy", params={"state": str(state)}),
                        reaper, str(tmp_path))
    assert res.start(10).rc == 0
    assert state.exists()
    assert res.stop(10).rc == 0


def test_missing_agent_is_not_installed(reaper, tmp_path):
    res = make_resource(ResourceSpec("n", "ocf", provider="heartbeat", type="NoSuchAgent"),
                        reaper, str(tmp_path))
    result = res.monitor(5)
    assert (result.rc, result.status) == (5, "error")
    assert "NoSuchAgent" in result.reason


def test_ocf_timeout_kills_the_agent(reaper, tmp_path):
    agents = tmp_path / "resource.d" / "test"
    agents.mkdir(parents=True)
    slow = agents / "Slow"
    slow.write_text("#!/bin/sh\nsleep 30\n")
    slow.chmod(0o755)
    os.environ["OCF_ROOT"] = str(tmp_path)
    try:
        res = make_resource(ResourceSpec("s", "ocf", provider="test", type="Slow"), reaper,
                            str(tmp_path))
        result = res.start(0.3)
    finally:
        del os.environ["OCF_ROOT"]
    assert (result.rc, result.status) == (1, "timeout")


def test_names_cannot_escape(reaper, tmp_path):
    with pytest.raises(ResourceError):
        make_resource(ResourceSpec("x", "ocf", provider="..", type="Dummy"), reaper,
                      str(tmp_path))
    with pytest.raises(ResourceError):
        make_resource(ResourceSpec("x", "lsb", type="../bin/sh"), reaper, str(tmp_path))


def test_lsb_codes_map_to_ocf():
    assert [map_status(c) for c in (0, 1, 2, 3, 4, 150)] == [0, 7, 7, 7, 1, 1]
    assert map_action("stop", 7) == 0
    assert map_action("start", 5) == 5
    assert map_action("start", 42) == 1


@pytest.mark.skipif(systemd_running(), reason="systemd is PID 1 here")
def test_systemd_unsupported_without_systemd(reaper, tmp_path):
    res = make_resource(ResourceSpec("u", "systemd", type="nginx"), reaper, str(tmp_path))
    result = res.start(5)
    assert (result.rc, result.status) == (5, "error")
    assert "systemd is not PID 1" in result.reason


def test_rsctmp_is_emptied_once_per_boot_like_run(tmp_path):
    """A VM's agent keeps HA_RSCTMP on disk: the first start after a boot empties it."""
    boot_id = tmp_path / "kernel_boot_id"
    boot_id.write_text("boot-1\n")
    state = tmp_path / "rsctmp" / "Dummy-d1.state"
    state.parent.mkdir()
    state.write_text("")
    assert clear_rsctmp_after_reboot(str(tmp_path), str(boot_id))
    assert not state.exists()
    state.parent.mkdir()
    state.write_text("")
    assert not clear_rsctmp_after_reboot(str(tmp_path), str(boot_id))   # same boot
    assert state.exists()
    boot_id.write_text("boot-2\n")
    assert clear_rsctmp_after_reboot(str(tmp_path), str(boot_id))
    assert not state.exists()
