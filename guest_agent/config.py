"""The agent's identity and settings: an INI file (``[agent]``) with command-line overrides.

Example ``/etc/pcloud/agent.conf``::

    [agent]
    deployable = dep1
    assembly = web
    uuid = 5b0c...            ; optional: generated once and kept in the state dir
    broker_url = amqp://pcloud.example:5672
    broker_user = pcloud      ; optional, put into the URL
    broker_password = secret
    state_dir = /var/lib/pcloud-agent
    heartbeat_interval = 1
    pidfile = /run/pcloud-agent.pid
    kernel_cmdline = yes      ; optional: identity from /proc/cmdline (assembly VMs)
    credentials = /path       ; this boot's login (user=, password=), or fw_cfg in a VM
    controller = dpe.dep1     ; whose requests it takes (default dpe.<deployable>)

A login in ``credentials`` replaces the one in ``broker_url``/``broker_user``: pcloud hands
every boot a fresh one (a 0600 file for a sandbox, QEMU's ``fw_cfg`` for a VM,
``opt/pcloud/credentials``), so images hold no secret (docs/security.md).

With ``kernel_cmdline = yes`` (assembly images set it), ``pcloud.deployable=``,
``pcloud.assembly=``, ``pcloud.uuid=`` and ``pcloud.heartbeat_interval=`` arguments on the kernel
command line override the file: the VM driver puts the deployable's names there, so one image
serves whichever assembly boots it. Command-line flags still win over both.
"""

from __future__ import annotations

import base64
import configparser
import os
import re
import subprocess
import urllib.parse
import uuid
from dataclasses import dataclass

from pcloud.config import TLSOptions
from pcloud.credentials import CredentialsError, read_credentials_file, with_credentials
from pcloud.identity import Credentials, dpe_user
from pcloud.urls import mask_url
from pcloud.wire import NAME

DEFAULT_CONFIG = "/etc/pcloud/agent.conf"
DEFAULT_STATE_DIR = "/var/lib/pcloud-agent"
_NAME = NAME
_UUID = re.compile(r"^\S{1,64}$")
KEYS = ("deployable", "assembly", "uuid", "broker_url", "broker_user", "broker_password",
        "state_dir", "heartbeat_interval", "pidfile", "kernel_cmdline", "credentials",
        "controller")
FW_CFG = "fw_cfg"
FW_CFG_PATH = "/sys/firmware/qemu_fw_cfg/by_name/opt/pcloud/credentials/raw"
KERNEL_CMDLINE = "/proc/cmdline"
BOOT_CA = "broker-ca.pem"            # this boot's broker CA, from fw_cfg (not a secret)
_SERVER_NAME = re.compile(r"^[A-Za-z0-9.:-]{1,253}$")
CMDLINE_KEYS = ("deployable", "assembly", "uuid", "heartbeat_interval")


class ConfigError(Exception):
    """The configuration cannot be used; the message is one line for the operator."""


@dataclass(frozen=True)
class AgentConfig:
    deployable: str
    assembly: str
    uuid: str
    broker_url: str
    state_dir: str
    heartbeat_interval: float
    pidfile: str | None = None
    controller: str | None = None
    #: TLS handed over with this boot's login (a VM's CA and the broker's name), else None:
    #: the usual settings (``PCLOUD_TLS_*``, ``[bus]``) apply
    tls: TLSOptions | None = None

    @property
    def agent_queue(self) -> str:
        return f"pcloud.agent.{self.deployable}.{self.assembly}"

    @property
    def heartbeat_key(self) -> str:
        return f"pcloud.heartbeat.{self.deployable}.{self.assembly}"

    @property
    def report_key(self) -> str:
        return f"pcloud.report.{self.deployable}.{self.assembly}"


def read_file(path: str, required: bool) -> dict[str, str]:
    """The ``[agent]`` section of an INI file; {} when the default file is simply absent."""
    if not os.path.exists(path):
        if required:
            raise ConfigError(f"config file {path} does not exist")
        return {}
    parser = configparser.ConfigParser(inline_comment_prefixes=(";", "#"))
    try:
        with open(path, encoding="utf-8") as f:
            parser.read_file(f)
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from None
    except configparser.Error as exc:
        raise ConfigError(f"config file {path} is not valid INI: "
                          f"{str(exc).splitlines()[0]}") from None
    if not parser.has_section("agent"):
        raise ConfigError(f"config file {path} has no [agent] section")
    values = dict(parser["agent"])
    unknown = sorted(set(values) - set(KEYS))
    if unknown:
        raise ConfigError(f"config file {path}: unknown key {unknown[0]!r} in [agent] "
                          f"(known: {', '.join(KEYS)})")
    return values


def cmdline_overrides(text: str) -> dict[str, str]:
    """The ``pcloud.<key>=<value>`` arguments of a kernel command line (last one wins)."""
    found: dict[str, str] = {}
    for word in text.split():
        key, sep, value = word.partition("=")
        name = key.removeprefix("pcloud.")
        if sep and key.startswith("pcloud.") and name in CMDLINE_KEYS and value:
            found[name] = value
    return found


def _from_kernel_cmdline(values: dict[str, str], where: str, cmdline: str) -> dict[str, str]:
    setting = values.pop("kernel_cmdline", "no").strip().lower()
    if setting not in ("yes", "no", "true", "false", "1", "0"):
        raise ConfigError(f"{where}: kernel_cmdline must be yes or no, not {setting!r}")
    if setting not in ("yes", "true", "1"):
        return {}
    try:
        with open(cmdline, encoding="utf-8", errors="replace") as f:
            return cmdline_overrides(f.read())
    except OSError:
        return {}


def load(path: str | None, overrides: dict[str, str | None],
         cmdline: str = KERNEL_CMDLINE, fw_cfg: str = FW_CFG_PATH) -> AgentConfig:
    """Merge file, kernel command line (if enabled) and flags (flags win), check, fill defaults."""
    values = read_file(path or DEFAULT_CONFIG, required=path is not None)
    where = f"config {path or DEFAULT_CONFIG}"
    values.update(_from_kernel_cmdline(values, where, cmdline))
    values.update({k: v for k, v in overrides.items() if v is not None})
    for key in ("deployable", "assembly"):
        value = values.get(key, "").strip()
        if not value:
            raise ConfigError(f"{where}: {key} is missing (set it in [agent] or pass --{key})")
        if not _NAME.match(value):
            raise ConfigError(f"{where}: {key} {value!r} must be 1-64 letters, digits, _ or -")
    try:
        interval = float(values.get("heartbeat_interval") or 1)
    except ValueError:
        raise ConfigError(f"{where}: heartbeat_interval "
                          f"{values['heartbeat_interval']!r} is not a number") from None
    if not 0.05 <= interval <= 3600:
        raise ConfigError(f"{where}: heartbeat_interval must be between 0.05 and 3600 seconds")
    state_dir = os.path.abspath(values.get("state_dir") or DEFAULT_STATE_DIR)
    try:
        os.makedirs(state_dir, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"{where}: cannot create state_dir {state_dir}: {exc}") from None
    ident = values.get("uuid", "").strip() or _stored_uuid(state_dir)
    if not _UUID.match(ident):
        raise ConfigError(f"{where}: uuid {ident!r} must be 1-64 characters without blanks")
    url = _broker_url(values, where)
    tls = None
    if values.get("credentials"):
        login, extra = _credentials(values["credentials"].strip(), where, fw_cfg)
        url = with_credentials(url, login)
        tls = _boot_tls(extra, state_dir, where)
    deployable = values["deployable"].strip()
    return AgentConfig(deployable=deployable,
                       assembly=values["assembly"].strip(), uuid=ident, broker_url=url,
                       state_dir=state_dir, heartbeat_interval=interval,
                       pidfile=values.get("pidfile") or None,
                       controller=(values.get("controller") or "").strip()
                       or dpe_user(deployable), tls=tls)


def _credentials(source: str, where: str, fw_cfg: str) -> tuple[Credentials, dict[str, str]]:
    """This boot's login from a file, or from QEMU's fw_cfg (``fw_cfg``), with what came
    with it."""
    path = source
    if source == FW_CFG:
        path = fw_cfg
        if not os.path.exists(path):
            subprocess.run(["modprobe", "qemu_fw_cfg"], capture_output=True, timeout=30,
                           check=False)
    try:
        return read_credentials_file(path)
    except CredentialsError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _boot_tls(extra: dict[str, str], state_dir: str, where: str) -> TLSOptions | None:
    """The TLS settings a VM's boot hands over beside its login: the broker's name
    (``tls_server_name``: the guest dials a forward address the certificate does not carry)
    and the CA to verify it with (``tls_ca``, base64 PEM; kept in the state dir, since
    proton reads a CA from a file). Verification is always on."""
    if "tls_server_name" not in extra and "tls_ca" not in extra:
        return None
    ca = None
    if extra.get("tls_ca"):
        try:
            pem = base64.b64decode(extra["tls_ca"], validate=True)
        except ValueError:
            raise ConfigError(f"{where}: tls_ca is not base64") from None
        if b"-----BEGIN CERTIFICATE-----" not in pem:
            raise ConfigError(f"{where}: tls_ca holds no PEM certificate")
        ca = os.path.join(state_dir, BOOT_CA)
        with open(ca, "wb") as handle:
            handle.write(pem)
    name = extra.get("tls_server_name") or None
    if name is not None and not _SERVER_NAME.match(name):
        raise ConfigError(f"{where}: tls_server_name {name!r} is not a host name")
    return TLSOptions(ca=ca, server_name=name)


def _broker_url(values: dict[str, str], where: str) -> str:
    url = values.get("broker_url") or os.environ.get("PCLOUD_BROKER_URL") or ""
    if not url:
        from pcloud.config import broker_url

        url = broker_url()
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("amqp", "amqps") or not parts.hostname:
        raise ConfigError(f"{where}: broker_url {mask_url(url)!r} is not amqp://host:port "
                          "or amqps://…")
    user, password = values.get("broker_user"), values.get("broker_password")
    if user:
        auth = urllib.parse.quote(user, safe="")
        if password:
            auth += ":" + urllib.parse.quote(password, safe="")
        host = parts.netloc.rpartition("@")[2]
        url = urllib.parse.urlunsplit(parts._replace(netloc=f"{auth}@{host}"))
    return url


def _stored_uuid(state_dir: str) -> str:
    """A uuid generated on first start and kept, so the identity survives restarts."""
    path = os.path.join(state_dir, "agent.uuid")
    try:
        with open(path, encoding="ascii") as f:
            value = f.read().strip()
        if value:
            return value
    except OSError:
        pass
    value = str(uuid.uuid4())
    with open(path, "w", encoding="ascii") as f:
        f.write(value + "\n")
    return value

