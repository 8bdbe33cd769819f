"""What an assembly image carries of pcloud: the guest agent's code, launcher, unit and config.

The agent runs on the image's own Python (Debian 12: 3.11, python3-qpid-proton, python3-lxml)
from plain source files under ``/opt/pcloud``, the same layout as a source checkout, so
``pcloud.paths`` finds the schemas beside the packages. Their bytecode comes along (when this
Python is the guest's): every boot starts from the image, so what the guest compiled itself
would be compiled again at each boot, under TCG, before the agent's first heartbeat.
"""

from __future__ import annotations

import configparser
import importlib.metadata
import importlib.util
import io
import py_compile
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pcloud import paths

PREFIX = "/opt/pcloud"
LAUNCHER = f"{PREFIX}/bin/pcloud-agent"
CONFIG_PATH = "/etc/pcloud/agent.conf"
STATE_DIR = "/var/lib/pcloud-agent"
UNIT_NAME = "pcloud-guest-agent.service"
UNIT_PATH = f"/etc/systemd/system/{UNIT_NAME}"
WANTS_LINK = f"/etc/systemd/system/multi-user.target.wants/{UNIT_NAME}"
GUEST_PYTHON = "/usr/bin/python3"
PACKAGES = ("pcloud", "guest_agent")
#: bytecode tag of the JEOS's Python (Debian 12: 3.11); other Pythons' bytecode is not shipped
GUEST_CACHE_TAG = "cpython-311"
#: the unit waits for nothing but basic.target: the agent waits for its route to the broker
#: itself, so its start-up overlaps the network's configuration
ONLINE_LINES = ("Wants=network-online.target", "After=network-online.target")
DATA_KINDS = ("schemas", "xml")

DEFAULT_UNIT = f"""[Unit]
Description=pcloud guest agent
StartLimitIntervalSec=0

[Service]
ExecStart={LAUNCHER} --config {CONFIG_PATH}
Restart=always
RestartSec=2
StandardOutput=journal+console
StandardError=journal+console

[Install]
WantedBy=multi-user.target
"""


@dataclass(frozen=True)
class Payload:
    """The agent's files as one tar archive, and the unit file that starts it."""

    archive: bytes
    unit: str
    files: tuple[str, ...]


def _entry_point() -> tuple[str, str]:
    for ep in importlib.metadata.entry_points(group="console_scripts", name="pcloud-agent"):
        module, _, func = ep.value.partition(":")
        return module, func or "main"
    return "guest_agent.cli", "main"


def launcher_script() -> str:
    """The image's equivalent of the ``pcloud-agent`` console script."""
    module, func = _entry_point()
    return (f"#!{GUEST_PYTHON}\n"
            f'"""pcloud guest agent, run from the sources in {PREFIX}."""\n'
            "import sys\n\n"
            f"sys.path.insert(0, {PREFIX!r})\n"
            f"from {module} import {func}\n\n"
            f"sys.exit({func}())\n")


def unit_file() -> str:
    """The project's unit if it ships one (its ExecStart pointed at the launcher, not ordered
    after ``network-online.target``), else ours."""
    try:
        shipped = paths.data_file("init", UNIT_NAME).read_text()
    except FileNotFoundError:
        return DEFAULT_UNIT
    lines = []
    for line in shipped.splitlines():
        if line.strip() in ONLINE_LINES:
            continue
        if line.startswith("ExecStart="):
            argv = line.removeprefix("ExecStart=").split()
            args = argv[1:] if argv and argv[0].endswith("pcloud-agent") else []
            if "--config" not in args:
                args = ["--config", CONFIG_PATH, *args]
            line = "ExecStart=" + " ".join([LAUNCHER, *args])
        lines.append(line)
    return "\n".join(lines) + "\n"


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"Python package {name!r} is not installed")
    return Path(next(iter(spec.submodule_search_locations)))


def _add(tar: tarfile.TarFile, arcname: str, data: bytes, mode: int = 0o644) -> None:
    info = tarfile.TarInfo(arcname)
    info.size, info.mode, info.uid, info.gid = len(data), mode, 0, 0
    tar.addfile(info, io.BytesIO(data))


def _bytecode(path: Path, arcname: str, workdir: Path) -> bytes | None:
    """The guest's cached bytecode of one module (checked against the source's hash when
    imported, so it never outlives an edited source); None if this Python's is not the guest's."""
    if sys.implementation.cache_tag != GUEST_CACHE_TAG:
        return None
    cfile = workdir / "module.pyc"
    py_compile.compile(str(path), cfile=str(cfile), dfile=f"{PREFIX}/{arcname}", doraise=True,
                       invalidation_mode=py_compile.PycInvalidationMode.CHECKED_HASH)
    return cfile.read_bytes()


def collect() -> Payload:
    """Gather the agent's packages (``.py`` files and their bytecode), data files and launcher."""
    buffer = io.BytesIO()
    names: list[str] = []
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar, \
            tempfile.TemporaryDirectory(prefix="pcloud-payload-") as workdir:
        trees = [(_package_dir(p), p) for p in PACKAGES]
        for kind in DATA_KINDS:
            try:
                trees.append((paths.data_dir(kind), kind))
            except FileNotFoundError:
                continue
        for root, prefix in trees:
            for path in sorted(root.rglob("*")):
                rel = path.relative_to(root)
                if not path.is_file() or "__pycache__" in rel.parts:
                    continue
                if prefix in PACKAGES and path.suffix != ".py":
                    continue
                names.append(f"{prefix}/{rel}")
                _add(tar, names[-1], path.read_bytes())
                if prefix in PACKAGES and (code := _bytecode(path, names[-1], Path(workdir))):
                    names.append(f"{prefix}/{rel.parent / '__pycache__'}/"
                                 f"{path.stem}.{GUEST_CACHE_TAG}.pyc")
                    _add(tar, names[-1], code)
        _add(tar, "bin/pcloud-agent", launcher_script().encode(), 0o755)
    return Payload(buffer.getvalue(), unit_file(), tuple(names))


def install(g: Any, payload: Payload, workdir: Path) -> None:
    """Unpack the payload into a mounted image and enable the agent's unit."""
    archive = workdir / "payload.tar.gz"
    archive.write_bytes(payload.archive)
    g.mkdir_p(PREFIX)
    g.tar_in(str(archive), PREFIX, compress="gzip")
    archive.unlink()
    g.write(UNIT_PATH, payload.unit.encode())
    g.mkdir_p(WANTS_LINK.rsplit("/", 1)[0])
    g.ln_sf(UNIT_PATH, WANTS_LINK)


def agent_config(ident: dict[str, Any]) -> str:
    """The guest agent's ``[agent]`` configuration for one assembly."""
    config = configparser.ConfigParser(interpolation=None)
    config["agent"] = {"deployable": ident["deployable"], "assembly": ident["name"],
                       "uuid": ident["uuid"], "broker_url": ident["guest_broker_url"],
                       "heartbeat_interval": str(ident["heartbeat_interval"]),
                       "state_dir": STATE_DIR, "kernel_cmdline": "yes",
                       "credentials": "fw_cfg"}
    out = io.StringIO()
    config.write(out)
    return out.getvalue()


def read_agent_config(g: Any) -> dict[str, str]:
    """The ``[agent]`` section baked into a mounted image (empty if there is none)."""
    if not g.is_file(CONFIG_PATH):
        return {}
    config = configparser.ConfigParser(interpolation=None)
    config.read_string(g.cat(CONFIG_PATH))
    return dict(config["agent"]) if config.has_section("agent") else {}
