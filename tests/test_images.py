"""JEOS and assembly images: the fast checks of inputs and payload, then real builds (slow).

The slow tests build the JEOS once into ``$PCLOUD_TEST_CACHE`` (default
``/var/tmp/pcloud-test-cache``; ~2 minutes, rebuilt when its recipe changes) and create
assemblies on it in a per-test catalogue, checking their content with libguestfs.
"""

from __future__ import annotations

import configparser
import gzip
import json
import lzma
import os
import shutil
import struct
import sys
import time
from pathlib import Path

import pytest

from pcloudsh import guest_payload, images
from pcloudsh.guestfs_support import guestfs_available, open_disk
from pcloudsh.jeos import MASKED_UNITS, PVH_NOTE, pvh_kernel

CACHE = Path(os.environ.get("PCLOUD_TEST_CACHE", "/var/tmp/pcloud-test-cache"))
BROKER = "amqp://asm-user:s3cret@127.0.0.1:5700"


def build_tools_missing() -> str | None:
    """Why the slow image tests cannot run here, or None."""
    if os.geteuid() != 0:
        return "building a JEOS needs root (debootstrap)"
    for tool, package in (("debootstrap", "debootstrap"), ("qemu-img", "qemu-utils"),
                          ("mkfs.ext4", "e2fsprogs")):
        if shutil.which(tool) is None:
            return f"{tool} missing: install the Debian package {package}"
    return guestfs_available()


def cached_jeos(catalogue: Path) -> images.Image:
    """The cached JEOS, linked into ``catalogue`` (built on first use)."""
    start = time.monotonic()
    jeos = images.jeos_ensure("debian-12", "x86_64", CACHE / "catalogue",
                              progress=lambda line: print(line, flush=True),
                              replace_stale=True)
    print(f"JEOS ready after {time.monotonic() - start:.1f} s "
          f"(built in {jeos.meta.get('build_seconds')} s)")
    link = catalogue / "jeos" / jeos.name
    link.parent.mkdir(parents=True, exist_ok=True)
    if not link.exists():
        link.symlink_to(jeos.path)
    return images.jeos_get(jeos.name, catalogue)


def test_unknown_distro_and_arch_are_clear_errors(tmp_path):
    with pytest.raises(images.ImageError, match="distribution 'fedora-40' is not supported"):
        images.jeos_create("fedora-40", "x86_64", tmp_path)
    with pytest.raises(images.ImageError, match="architecture 'aarch64'"):
        images.jeos_create("debian-12", "aarch64", tmp_path)
    assert images.jeos_name("bookworm", "amd64") == "debian-12-x86_64"


def test_apt_mirror_from_deb822_and_one_line_sources(tmp_path, monkeypatch):
    monkeypatch.delenv("PCLOUD_DEBIAN_MIRROR", raising=False)
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list.d" / "debian.sources").write_text(
        "Types: deb\n# a comment\nURIs: http://mirror.invalid/debian\n"
        "Suites: bookworm bookworm-updates\nComponents: main\n\n"
        "Types: deb\nURIs: http://mirror.invalid/security\nSuites: bookworm-security\n"
        "Components: main\n")
    assert images.apt_mirror("bookworm", tmp_path) == "http://mirror.invalid/debian"
    (tmp_path / "sources.list.d" / "debian.sources").unlink()
    (tmp_path / "sources.list").write_text(
        "deb [arch=amd64] http://other.invalid/debian bookworm main contrib\n")
    assert images.apt_mirror("bookworm", tmp_path) == "http://other.invalid/debian"
    with pytest.raises(images.ImageError, match="PCLOUD_DEBIAN_MIRROR"):
        images.apt_mirror("trixie", tmp_path)
    monkeypatch.setenv("PCLOUD_DEBIAN_MIRROR", "http://env.invalid/debian")
    assert images.apt_mirror("trixie", tmp_path) == "http://env.invalid/debian"


def test_guest_broker_url_keeps_the_port_and_drops_the_credentials():
    assert images.guest_broker_url(BROKER) == "amqp://10.0.2.100:5700"
    assert images.guest_broker_url("amqps://broker.example") == "amqps://10.0.2.100:5671"
    assert images.redact_url(BROKER) == "amqp://asm-user:***@127.0.0.1:5700"
    with pytest.raises(images.ImageError):
        images.guest_broker_url("http://x/")


def _fw_cfg(tmp_path) -> str:
    """What QEMU's fw_cfg item opt/pcloud/credentials shows a booted assembly."""
    path = tmp_path / "fw_cfg-raw"
    path.write_text("user=agent.dep1.web.0123abcd\npassword=boot-pw\n")
    return str(path)


def test_payload_carries_agent_sources_and_launcher():
    import io
    import tarfile

    payload = guest_payload.collect()
    assert "guest_agent/cli.py" in payload.files
    assert "pcloud/bus/bus.py" in payload.files
    pyc = f"guest_agent/__pycache__/cli.{guest_payload.GUEST_CACHE_TAG}.pyc"
    with tarfile.open(fileobj=io.BytesIO(payload.archive)) as tar:
        launcher = tar.extractfile("bin/pcloud-agent").read().decode()
        if sys.implementation.cache_tag == guest_payload.GUEST_CACHE_TAG:
            # checked against the source's hash (flags 0b11), whatever the files' mtimes
            assert struct.unpack("<I", tar.extractfile(pyc).read()[4:8])[0] == 0b11
        else:
            assert not any(name.endswith(".pyc") for name in payload.files)
    assert launcher.startswith("#!/usr/bin/python3\n")
    assert "from guest_agent.cli import main" in launcher
    assert f"ExecStart={guest_payload.LAUNCHER} " in payload.unit
    assert "--config /etc/pcloud/agent.conf" in payload.unit
    assert "network-online" not in payload.unit       # the agent waits for its route itself


def test_agent_config_is_what_the_agent_reads(tmp_path):
    from guest_agent import config as agent_config

    ident = {"deployable": "dep1", "name": "web", "uuid": "u-1",
             "guest_broker_url": images.guest_broker_url(BROKER), "heartbeat_interval": 0.5}
    path = tmp_path / "agent.conf"
    path.write_text(guest_payload.agent_config(ident))
    cmdline = tmp_path / "cmdline"
    cmdline.write_text("root=/dev/vda rw console=ttyS0\n")
    loaded = agent_config.load(str(path), {"state_dir": str(tmp_path / "state")},
                               cmdline=str(cmdline), fw_cfg=_fw_cfg(tmp_path))
    assert (loaded.deployable, loaded.assembly, loaded.uuid) == ("dep1", "web", "u-1")
    assert loaded.broker_url == "amqp://agent.dep1.web.0123abcd:boot-pw@10.0.2.100:5700"
    assert loaded.controller == "dpe.dep1"
    assert loaded.heartbeat_interval == 0.5


def test_kernel_command_line_names_the_assembly_an_image_boots_as(tmp_path):
    from guest_agent import config as agent_config

    ident = {"deployable": images.UNASSIGNED, "name": "tmpl", "uuid": "u-1",
             "guest_broker_url": images.guest_broker_url(BROKER), "heartbeat_interval": 1.0}
    path = tmp_path / "agent.conf"
    path.write_text(guest_payload.agent_config(ident))
    cmdline = tmp_path / "cmdline"
    cmdline.write_text("root=/dev/vda pcloud.deployable=shop pcloud.assembly=db "
                       "pcloud.uuid=u-2 pcloud.heartbeat_interval=0.5 pcloud.broker_url=x "
                       "systemd.hostname=db\n")
    state = {"state_dir": str(tmp_path / "state")}
    fw_cfg = _fw_cfg(tmp_path)
    loaded = agent_config.load(str(path), state, cmdline=str(cmdline), fw_cfg=fw_cfg)
    assert (loaded.deployable, loaded.assembly, loaded.uuid) == ("shop", "db", "u-2")
    assert loaded.heartbeat_interval == 0.5
    assert loaded.broker_url == "amqp://agent.dep1.web.0123abcd:boot-pw@10.0.2.100:5700"
    assert loaded.controller == "dpe.shop"
    flags = agent_config.load(str(path), {**state, "assembly": "web"}, cmdline=str(cmdline),
                              fw_cfg=fw_cfg)
    assert flags.assembly == "web"
    path.write_text(path.read_text().replace("kernel_cmdline = yes", "kernel_cmdline = no"))
    ignored = agent_config.load(str(path), state, cmdline=str(cmdline), fw_cfg=fw_cfg)
    assert (ignored.deployable, ignored.assembly) == (images.UNASSIGNED, "tmpl")


def _bzimage(payload: bytes) -> bytes:
    """A bzImage as far as ``pvh_kernel`` reads one: setup header, then the payload."""
    image = bytearray(1024)
    image[0x1F1] = 1                                    # one setup sector after the boot one
    image[0x202:0x206] = b"HdrS"
    struct.pack_into("<II", image, 0x248, 16, len(payload))
    return bytes(image) + b"\0" * 16 + payload + b"\1\2\3\4"    # size appended, as Linux


def test_pvh_kernel_is_the_uncompressed_elf_only_if_it_has_a_pvh_entry():
    elf = b"\x7fELF" + b"\0" * 60 + PVH_NOTE + b"\0" * 8 + b"kernel"
    assert pvh_kernel(_bzimage(lzma.compress(elf, format=lzma.FORMAT_XZ))) == elf
    assert pvh_kernel(_bzimage(gzip.compress(elf))) == elf
    no_pvh = elf.replace(PVH_NOTE, b"\0" * len(PVH_NOTE))
    assert pvh_kernel(_bzimage(lzma.compress(no_pvh, format=lzma.FORMAT_XZ))) is None
    assert pvh_kernel(_bzimage(b"\x28\xb5\x2f\xfd zstd")) is None
    assert pvh_kernel(b"MZ not a bzImage") is None


def test_bad_names_and_missing_images_are_refused(tmp_path):
    with pytest.raises(images.ImageError, match="not valid"):
        images.assembly_create("bad name", "j", tmp_path, deployable="d", broker_url=BROKER)
    with pytest.raises(images.ImageNotFoundError, match="JEOS 'nope'"):
        images.assembly_create("web", "nope", tmp_path, deployable="d", broker_url=BROKER)
    with pytest.raises(images.ImageNotFoundError):
        images.assembly_delete("web", tmp_path)
    assert images.jeos_list(tmp_path) == [] and images.assembly_list(tmp_path) == []


@pytest.mark.skipif(shutil.which("debootstrap") is None or os.geteuid() != 0,
                    reason="needs root and the Debian package debootstrap")
def test_failed_jeos_build_leaves_nothing_behind(tmp_path):
    lines: list[str] = []
    with pytest.raises(images.ImageError, match="debootstrap"):
        images.jeos_create("debian-12", "x86_64", tmp_path, progress=lines.append,
                           mirror="http://127.0.0.1:9/debian")
    assert lines and "debootstrap bookworm" in lines[0]
    assert list((tmp_path / "jeos").iterdir()) == []


def read_guest(disk: Path) -> dict[str, object]:
    """What the checks need from an assembly disk, read through libguestfs."""
    with open_disk(disk, readonly=True) as g:
        wants = f"/etc/systemd/system/multi-user.target.wants/{guest_payload.UNIT_NAME}"
        return {"conf": g.cat(guest_payload.CONFIG_PATH),
                "conf_mode": g.statns(guest_payload.CONFIG_PATH)["st_mode"] & 0o777,
                "machine_id": g.cat("/etc/machine-id").strip(),
                "hostname": g.cat("/etc/hostname").strip(),
                "unit": g.cat(guest_payload.UNIT_PATH),
                "wants": g.readlink(wants) if g.is_symlink(wants) else None,
                "launcher_mode": g.statns(guest_payload.LAUNCHER)["st_mode"] & 0o777,
                "agent_files": set(g.find(f"{guest_payload.PREFIX}/guest_agent")),
                "schemas": g.is_dir(f"{guest_payload.PREFIX}/schemas"),
                "python": g.exists("/usr/bin/python3"),
                "masked": {unit for unit in MASKED_UNITS
                           if g.readlink(f"/etc/systemd/system/{unit}") == "/dev/null"},
                "initrd_no_udev": g.exists("/etc/initramfs-tools/hooks/pcloud-no-udev"),
                "proton": g.exists("/usr/lib/python3/dist-packages/proton/__init__.py")}


def agent_section(text: str) -> dict[str, str]:
    parser = configparser.ConfigParser()
    parser.read_string(text)
    return dict(parser["agent"])


@pytest.fixture
def catalogue(tmp_path: Path) -> Path:
    reason = build_tools_missing()
    if reason:
        pytest.skip(reason)
    return tmp_path / "catalogue"


@pytest.mark.slow
def test_assembly_create_bakes_agent_config_unit_and_identity(catalogue):
    jeos = cached_jeos(catalogue)
    assert jeos.meta["kernel"] == "vmlinux"           # Debian's kernel boots through PVH
    assert (jeos.path / "vmlinux").is_file() and (jeos.path / "initrd.img").is_file()
    start = time.monotonic()
    steps: list[str] = []
    asm = images.assembly_create("web_1", jeos.name, catalogue, deployable="dep1",
                                 broker_url=BROKER, uuid="6d1b0e3c-0000-4000-8000-000000000001",
                                 heartbeat_interval=0.5, progress=steps.append)
    print(f"assembly_create took {time.monotonic() - start:.1f} s")
    assert any("libguestfs" in s for s in steps)
    meta = json.loads((asm.path / "assembly.json").read_text())
    assert meta["jeos"] == jeos.name and meta["deployable"] == "dep1"
    assert meta["mac"].startswith("52:54:00:") and len(meta["mac"]) == 17
    assert "s3cret" not in (asm.path / "assembly.json").read_text()
    assert meta["guest_broker_port"] == 5700
    guest = read_guest(asm.disk)
    conf = agent_section(guest["conf"])
    assert conf["deployable"] == "dep1" and conf["assembly"] == "web_1"
    assert conf["uuid"] == "6d1b0e3c-0000-4000-8000-000000000001"
    assert conf["broker_url"] == "amqp://10.0.2.100:5700"    # no secret in an image
    assert conf["credentials"] == "fw_cfg"
    assert "s3cret" not in guest["conf"]
    assert conf["heartbeat_interval"] == "0.5"
    assert guest["conf_mode"] == 0o600
    assert guest["machine_id"] == meta["machine_id"] and len(guest["machine_id"]) == 32
    assert guest["hostname"] == "web-1"
    assert guest["wants"] == guest_payload.UNIT_PATH
    assert f"ExecStart={guest_payload.LAUNCHER}" in guest["unit"]
    assert guest["launcher_mode"] == 0o755
    assert {"/cli.py", "/config.py", "/agent.py"} <= guest["agent_files"]
    assert guest["schemas"] and guest["python"] and guest["proton"]
    assert guest["masked"] == set(MASKED_UNITS) and guest["initrd_no_udev"]
    assert [a.name for a in images.assembly_list(catalogue)] == ["web_1"]
    again = images.assembly_create("web_1", jeos.name, catalogue, deployable="dep1",
                                   broker_url=BROKER, exist_ok=True)
    assert again.meta["uuid"] == meta["uuid"]
    with pytest.raises(images.ImageExistsError):
        images.assembly_create("web_1", jeos.name, catalogue, deployable="dep1",
                               broker_url=BROKER)
    with pytest.raises(images.ImageError, match="base of assemblies web_1"):
        images.jeos_delete(jeos.name, catalogue)


@pytest.mark.slow
def test_assembly_clone_gets_a_fresh_identity_and_delete_removes_it(catalogue):
    jeos = cached_jeos(catalogue)
    src = images.assembly_create("db", jeos.name, catalogue, deployable="dep1",
                                 broker_url=BROKER)
    start = time.monotonic()
    dst = images.assembly_clone("db", "db2", catalogue)
    print(f"assembly_clone took {time.monotonic() - start:.1f} s")
    assert dst.meta["jeos"] == jeos.name
    for key in ("uuid", "machine_id", "mac", "hostname"):
        assert dst.meta[key] != src.meta[key], key
    guest = read_guest(dst.disk)
    conf = agent_section(guest["conf"])
    assert conf["assembly"] == "db2" and conf["uuid"] == dst.meta["uuid"]
    assert conf["broker_url"] == "amqp://10.0.2.100:5700"
    assert guest["machine_id"] == dst.meta["machine_id"] and guest["hostname"] == "db2"
    assert guest["wants"] == guest_payload.UNIT_PATH
    assert agent_section(read_guest(src.disk)["conf"])["assembly"] == "db"
    images.assembly_delete("db2", catalogue)
    assert [a.name for a in images.assembly_list(catalogue)] == ["db"]

    assert "resource-agents" in jeos.meta["packages"]        # every JEOS runs OCF resources


def pcloudsh(state: Path, *args: str) -> str:
    """Run ``pcloudsh`` as an operator would; its output (progress included) on success."""
    import subprocess
    import sys

    env = dict(os.environ, PCLOUD_STATE_DIR=str(state), PCLOUD_BROKER_URL=BROKER)
    result = subprocess.run([str(Path(sys.executable).with_name("pcloudsh")), *args],
                            capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.slow
def test_shell_builds_lists_clones_and_deletes_assembly_images(tmp_path):
    reason = build_tools_missing()
    if reason:
        pytest.skip(reason)
    state = tmp_path / "state"
    jeos = cached_jeos(state / "pcloudsh" / "images")
    out = pcloudsh(state, "assembly_create", "web", "debian12", "x86_64")
    assert "libguestfs" in out and f"created on JEOS {jeos.name}, image" in out
    # a template's software goes into the image first: apache2 and its dependencies
    start = time.monotonic()
    out = pcloudsh(state, "assembly_resource_add", "httpd", "httpd", "web")
    print(f"assembly_resource_add httpd (apache2 installed) took {time.monotonic() - start:.1f} s")
    assert "downloaded" in out and "dpkg -i" in out and "installed apache2" in out, out
    assert "resource httpd (httpd) added to assembly web" in out
    catalogue = state / "pcloudsh" / "images"
    assert images.assembly_get("web", catalogue).meta["packages"] == ["apache2", "curl"]
    with pytest.raises(images.ImageError, match="apt-get could not fetch"):
        images.assembly_install("web", ["no-such-package-pcloud"], catalogue)
    out = pcloudsh(state, "assembly_clone", "web", "web2")
    assert "fresh identity" in out
    with open_disk(images.assembly_get("web2", catalogue).disk, readonly=True) as g:
        assert g.is_file("/usr/sbin/apache2")                      # the clone has it too
        assert g.is_file("/usr/lib/ocf/resource.d/heartbeat/apache")
        assert not g.exists("/usr/sbin/policy-rc.d")
    listed = {a["name"]: a for a in json.loads(pcloudsh(state, "--json", "assembly_list"))}
    assert set(listed) == {"web", "web2"}
    assert listed["web2"]["image"] == str(state / "pcloudsh" / "images" / "assemblies" / "web2")
    assert [a.name for a in images.assembly_list(state / "pcloudsh" / "images")] == \
        ["web", "web2"]
    out = pcloudsh(state, "assembly_create", "sandbox", "F14", "x86_64")
    assert "no image" in out
    assert json.loads(pcloudsh(state, "--json", "jeos_list"))[0]["name"] == jeos.name
    pcloudsh(state, "assembly_delete", "web2")
    assert [a.name for a in images.assembly_list(state / "pcloudsh" / "images")] == ["web"]
