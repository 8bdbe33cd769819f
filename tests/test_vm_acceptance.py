"""pacemaker-cloud's original acceptance test on real VMs, through ``make vm-demo``'s code.

Three httpd assemblies from one JEOS (``assembly_create``, ``assembly_clone`` ×2,
``assembly_resource_add httpd httpd`` on each, which installs apache2 into each image), one
deployable on ``libvirt`` under a private real libvirtd, every step a real ``pcloudsh``
command. Then ``killall -9 apache2`` inside a guest: restarted, HTTP answers again; and
``virsh destroy`` of another: known from libvirt (not from missed heartbeats), fenced, booted
again, httpd back. ``pcloudsh events`` runs alongside and must show each failure and each
restart; ``deployable_status`` counts them. Slow: four TCG boots and four image edits.
"""

from __future__ import annotations

import os

import pytest
from support.vm import CACHE, missing

from pcloud.libvirtd import libvirt_missing
from pcloudsh import images
from pcloudsh.vm_demo import DEPLOYABLE, VmDemo

pytestmark = pytest.mark.slow


@pytest.fixture
def demo(tmp_path):
    reason = missing() or libvirt_missing()
    if reason:
        pytest.skip(reason)
    images.jeos_ensure("debian-12", "x86_64", CACHE / "catalogue", replace_stale=True)
    os.environ.pop("PCLOUD_LIBVIRT_URI", None)          # the demo's own libvirtd
    vm_demo = VmDemo(tmp_path, None, CACHE / "catalogue")    # and its own broker
    yield vm_demo
    vm_demo.cleanup()


def shown(display: list[str], *words: str) -> bool:
    return any(all(w in line for w in words) for line in display)


def test_original_acceptance_test_on_libvirt(demo):
    demo.start_broker()
    demo.start_libvirtd()
    demo.start_cped()
    demo.build_images()
    demo.deploy()                                  # HTTP answers 200 inside all three
    demo.kill_httpd("web2")                        # HTTP answers again afterwards
    demo.force_off("web3")                         # httpd runs and answers again in it

    lost = demo.log.wait_for(lambda e: e.type.value == "assembly_state_change"
                             and e.assembly == "web3" and e.state == "failed", 1, "web3 lost")
    assert "reported by the libvirt driver" in lost.reason, lost.reason   # not heartbeats
    assert demo.figures["off_detected"] < demo.figures["off_restart_begun"]

    # the live display of pcloudsh showed each failure and each restart
    display = demo.display
    assert shown(display, "web2/httpd", "failed"), display
    assert shown(display, "web2/httpd", "running"), display
    assert shown(display, "web3", "failed", "destroyed"), display
    assert shown(display, "web3", "fenc"), display
    assert shown(display, "web3/httpd", "running"), display

    status = demo.bus.call("pcloud.cpe", "deployable_status",
                           f'<deployable name="{DEPLOYABLE}"/>', timeout=15)
    assert status.get("state") == "running"
    counts = {(a.get("name"), r.get("name")): int(r.get("fail_count", "0"))
              for a in status.iter("assembly") for r in a.iter("resource")}
    assert counts[("web2", "httpd")] == 1, counts
    demo.stop_all()
