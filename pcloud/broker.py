"""A private RabbitMQ node for pcloud: the embedded default broker and the test broker.

Everything lives under ``<state_dir>/broker/``: data, logs, config, the generated
credentials (0600) and the ports in use. The node has its own name, AMQP port (127.0.0.1
only), distribution port (127.0.0.1 only) and its own epmd on its own port, so it never
touches the machine's broker or epmd and leaves no process behind after ``stop``. Users
and the reply-queue expiry policy come from a definitions file loaded at boot, so start-up
needs no ``rabbitmqctl`` round trips.

TLS is on by default: an amqps listener (127.0.0.1, a port of its own) with a server
certificate for ``localhost`` (and IP 127.0.0.1) signed by a CA of the node's own, both made
once with the ``openssl`` CLI under ``broker/tls/`` (keys 0600) and reused at every start.
Clients verify the broker by name against ``broker/tls/ca.pem``. To serve a certificate of
your own, replace ``server.pem`` and ``server.key`` there (and give clients its CA).
The management plugin (HTTP API on 127.0.0.1) is off unless ``start(management=True)``.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from pcloud.fsutil import write_private
from pcloud.identity import OPERATOR_TAG

RABBIT_BIN = Path(os.environ.get("PCLOUD_RABBITMQ_BIN", "/usr/lib/rabbitmq/bin"))
DEFAULT_PORT = 5682
DEFAULT_TLS_PORT = 5681
TLS_HOST = "localhost"
CERT_DAYS = 3650
CA_DAYS = 2 * CERT_DAYS
USER = "pcloud"
START_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0
HANDSHAKE_TIMEOUT_MS = 120_000    # a booting VM's forward may wait this long for its agent
REPLY_POLICY = {"vhost": "/", "name": "pcloud-reply-expiry", "pattern": r"^pcloud\.reply\.",
                "apply-to": "queues", "definition": {"expires": 5000}, "priority": 0}


class BrokerError(Exception):
    """The private broker could not be started, stopped or found."""


class NotInstalled(BrokerError):
    """RabbitMQ's binaries are missing."""

    def __init__(self) -> None:
        super().__init__("RabbitMQ is not installed: apt-get install rabbitmq-server")


@dataclass
class Settings:
    """What a node needs to be found again: name, ports, credentials."""

    node: str
    port: int
    dist_port: int
    epmd_port: int
    user: str
    password: str
    tls_port: int | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_ca: str | None = None
    management_port: int | None = None

    @property
    def url(self) -> str:
        """Plain AMQP on loopback, for tools on this host."""
        return f"amqp://{self.user}:{self.password}@127.0.0.1:{self.port}"

    @property
    def tls_url(self) -> str | None:
        """amqps with the host name the certificate carries (clients verify it by name)."""
        if not self.tls_port:
            return None
        return f"amqps://{self.user}:{self.password}@{TLS_HOST}:{self.tls_port}"

    @property
    def management_url(self) -> str | None:
        """The management HTTP API with the owner account (an administrator)."""
        if not self.management_port:
            return None
        return f"http://{self.user}:{self.password}@127.0.0.1:{self.management_port}"


def broker_dir(state_dir: str | os.PathLike) -> Path:
    return Path(state_dir).resolve() / "broker"


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (the kernel picks it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _settings_file(state_dir) -> Path:
    return broker_dir(state_dir) / "settings.json"


def load_settings(state_dir) -> Settings | None:
    """The saved settings of the node in this state dir, or None."""
    try:
        saved = json.loads(_settings_file(state_dir).read_text())
        known = {key: value for key, value in saved.items()
                 if key in Settings.__dataclass_fields__}
        return Settings(**known)
    except (OSError, ValueError, TypeError, AttributeError):
        return None


def _password_hash(password: str) -> str:
    """RabbitMQ's rabbit_password_hashing_sha256: base64(salt + sha256(salt + password))."""
    salt = secrets.token_bytes(4)
    return base64.b64encode(salt + hashlib.sha256(salt + password.encode()).digest()).decode()


def _openssl(*args: str, cwd: Path) -> None:
    try:
        subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True,
                       timeout=60, stdin=subprocess.DEVNULL)
    except FileNotFoundError:
        raise BrokerError("openssl is not installed (apt-get install openssl); it makes the "
                          "broker's TLS certificates") from None
    except subprocess.CalledProcessError as exc:
        raise BrokerError(f"openssl {args[0]} failed: "
                          f"{exc.stderr.decode(errors='replace').strip()[-300:]}") from None


def _fresh(cert: Path, days: int) -> bool:
    """Made less than ``days - 1`` days ago, by its mtime (an openssl run to read its end
    date would cost more than the rest of a restart's preparation)."""
    try:
        age = time.time() - cert.stat().st_mtime
    except OSError:
        return False
    return age < (days - 1) * 86400


def _ec_key(name: str) -> list[str]:
    """P-256 keys: made in milliseconds, unlike RSA, and both Erlang and proton speak them."""
    return ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", name]


def ensure_certificates(state_dir) -> tuple[Path, Path, Path]:
    """(ca, cert, key) under ``broker/tls/``: made once (a few openssl runs), then reused
    while fresh; a new server certificate keeps the CA, so clients keep trusting it."""
    tls = broker_dir(state_dir) / "tls"
    tls.mkdir(parents=True, exist_ok=True)
    os.chmod(tls, 0o700)
    ca, ca_key, cert, key = (tls / "ca.pem", tls / "ca.key", tls / "server.pem",
                             tls / "server.key")
    if key.exists() and ca.exists() and _fresh(cert, CERT_DAYS):
        return ca, cert, key
    try:    # openssl writes keys by the umask: the 0700 directory keeps them private
        if not (ca_key.exists() and _fresh(ca, CA_DAYS - CERT_DAYS)):
            _openssl("req", "-x509", *_ec_key("ca.key.new"), "-days", str(CA_DAYS),
                     "-subj", f"/CN=pcloud private broker CA {secrets.token_hex(4)}",
                     "-addext", "basicConstraints=critical,CA:TRUE",
                     "-addext", "keyUsage=critical,keyCertSign,cRLSign",
                     "-out", "ca.pem.new", cwd=tls)
            os.replace(tls / "ca.key.new", ca_key)
            os.replace(tls / "ca.pem.new", ca)
        _openssl("req", "-new", *_ec_key("server.key.new"), "-subj", f"/CN={TLS_HOST}",
                 "-out", "server.csr", cwd=tls)
        (tls / "server.ext").write_text(
            f"subjectAltName=DNS:{TLS_HOST},IP:127.0.0.1\nbasicConstraints=CA:FALSE\n"
            "keyUsage=critical,digitalSignature,keyAgreement\nextendedKeyUsage=serverAuth\n")
        _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                 "-set_serial", str(secrets.randbits(63)), "-days", str(CERT_DAYS),
                 "-extfile", "server.ext", "-out", "server.pem.new", cwd=tls)
        os.replace(tls / "server.key.new", key)
        os.replace(tls / "server.pem.new", cert)
    finally:
        for leftover in ("server.csr", "server.ext"):
            with contextlib.suppress(FileNotFoundError):
                (tls / leftover).unlink()
    for private in (ca_key, key):
        os.chmod(private, 0o600)
    for public in (ca, cert):
        os.chmod(public, 0o644)
    return ca, cert, key


def _pick_port(wanted: int | None, saved: int | None, default: int | None = None) -> int:
    """The port asked for, else the saved one while free, else ``default`` if free, else any."""
    if wanted:
        return wanted
    for candidate in (saved, default):
        if candidate and _port_free(candidate):
            return candidate
    return free_port()


def _prepare(state_dir, port: int | None, dist_port: int | None,
             epmd_port: int | None, tls: bool, tls_port: int | None,
             management: bool | None) -> Settings:
    """Create or update the node's directory and files; reuse saved choices when possible."""
    root = broker_dir(state_dir)
    for sub in ("", "mnesia", "log", "home"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    os.chmod(root, 0o700)
    saved = load_settings(state_dir)
    env_port = os.environ.get("PCLOUD_BROKER_PORT")
    chosen_port = port or (int(env_port) if env_port else None) or (
        saved.port if saved else DEFAULT_PORT)
    digest = hashlib.sha1(str(root).encode()).hexdigest()[:10]
    settings = Settings(
        node=saved.node if saved else f"pcloud-{digest}@localhost",
        port=chosen_port,
        dist_port=dist_port or (saved.dist_port if saved and _port_free(saved.dist_port)
                                else free_port()),
        epmd_port=epmd_port or (saved.epmd_port if saved and _port_free(saved.epmd_port)
                                else free_port()),
        user=saved.user if saved else USER,
        password=saved.password if saved else secrets.token_hex(16),
    )
    if tls:
        ca, cert, key = ensure_certificates(state_dir)
        settings.tls_ca, settings.tls_cert, settings.tls_key = str(ca), str(cert), str(key)
        settings.tls_port = _pick_port(
            tls_port, saved.tls_port if saved else None,
            DEFAULT_TLS_PORT if chosen_port == DEFAULT_PORT else None)
    if management is None:
        management = bool(saved and saved.management_port)
    if management:
        settings.management_port = _pick_port(None, saved.management_port if saved else None)
    write_private(_settings_file(state_dir), json.dumps(settings.__dict__, indent=1))
    write_private(root / "credentials", f"user={settings.user}\npassword={settings.password}\n"
                                         f"url={settings.url}\n")
    definitions = {
        "vhosts": [{"name": "/"}],
        "users": [{"name": settings.user, "password_hash": _password_hash(settings.password),
                   "hashing_algorithm": "rabbit_password_hashing_sha256",
                   "tags": ["administrator", OPERATOR_TAG]}],
        "permissions": [{"user": settings.user, "vhost": "/", "configure": ".*",
                         "write": ".*", "read": ".*"}],
        "policies": [REPLY_POLICY],
    }
    write_private(root / "definitions.json", json.dumps(definitions, indent=1))
    plugins = "rabbitmq_amqp1_0,rabbitmq_management" if management else "rabbitmq_amqp1_0"
    (root / "enabled_plugins").write_text(f"[{plugins}].\n")
    (root / "rabbitmq-env.conf").write_text("")
    write_private(root / "rabbitmq.conf", "\n".join([
        f"listeners.tcp.default = 127.0.0.1:{settings.port}",
        "amqp1_0.default_user = none",
        f"default_user = {settings.user}",
        f"default_pass = {settings.password}",
        f"load_definitions = {root / 'definitions.json'}",
        "log.file.level = info",
        "log.console = false",
        # a VM's broker forward is a connection QEMU opens when it starts, tens of seconds
        # before the guest's agent speaks on it (10 s by default closed it first, and the
        # agent's first handshake was lost on the connection being replaced)
        f"handshake_timeout = {HANDSHAKE_TIMEOUT_MS}",
        *_tls_lines(settings),
        *_management_lines(settings),
        "",
    ]))
    return settings


def _tls_lines(settings: Settings) -> list[str]:
    """An amqps listener (server certificate only; clients authenticate with PLAIN)."""
    if not settings.tls_port:
        return []
    return [f"listeners.ssl.default = 127.0.0.1:{settings.tls_port}",
            f"ssl_options.certfile = {settings.tls_cert}",
            f"ssl_options.keyfile = {settings.tls_key}",
            "ssl_options.verify = verify_none",
            "ssl_options.fail_if_no_peer_cert = false"]


def _management_lines(settings: Settings) -> list[str]:
    if not settings.management_port:
        return []
    return [f"management.tcp.port = {settings.management_port}",
            "management.tcp.ip = 127.0.0.1"]


def ctl_env(state_dir, settings: Settings) -> dict[str, str]:
    """The environment under which ``rabbitmqctl`` finds this node.

    ``-start_epmd false``: when our epmd is gone, a CLI run must fail, not start an epmd of
    its own. That one would be a child of whoever ran the CLI (cped, dped), die with it, and
    leave the node unreachable, since a node registers with epmd only once, at boot.
    """
    return dict(_env(state_dir, settings), ERL_FLAGS="-start_epmd false")


#: What the broker's processes keep of the caller's environment: nothing else (no login, no
#: state dir), since epmd and the node outlive the process that started them.
INHERITED_ENV = ("PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR")


def _env(state_dir, settings: Settings) -> dict[str, str]:
    root = broker_dir(state_dir)
    env = {key: os.environ[key] for key in INHERITED_ENV if key in os.environ}
    env.update({
        "RABBITMQ_NODENAME": settings.node,
        "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
        "RABBITMQ_NODE_PORT": str(settings.port),
        "RABBITMQ_DIST_PORT": str(settings.dist_port),
        "RABBITMQ_MNESIA_BASE": str(root / "mnesia"),
        "RABBITMQ_LOG_BASE": str(root / "log"),
        "RABBITMQ_ENABLED_PLUGINS_FILE": str(root / "enabled_plugins"),
        "RABBITMQ_CONFIG_FILE": str(root / "rabbitmq"),
        "RABBITMQ_ADVANCED_CONFIG_FILE": str(root / "advanced.config"),
        "RABBITMQ_CONF_ENV_FILE": str(root / "rabbitmq-env.conf"),
        "RABBITMQ_PID_FILE": str(root / "pid"),
        "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
        "ERL_EPMD_PORT": str(settings.epmd_port),
        "ERL_EPMD_ADDRESS": "127.0.0.1",
        "HOME": str(root / "home"),
    })
    return env


def _check_installed() -> None:
    if not (RABBIT_BIN / "rabbitmq-server").exists() or shutil.which("epmd") is None and not (
            Path("/usr/bin/epmd").exists()):
        raise NotInstalled()


def _pid(state_dir) -> int | None:
    try:
        return int((broker_dir(state_dir) / "pid").read_text().strip())
    except (OSError, ValueError):
        return None


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


def _environ(pid: int) -> set[str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return set()
    return {part.decode(errors="replace") for part in raw.split(b"\0") if part}


def _belongs(pid: int, settings: Settings, root: Path) -> bool:
    """A live process of this node: its beam (home dir, node name) or its epmd (port)."""
    args = _cmdline(pid)
    if not args or _is_zombie(pid):
        return False
    if str(root / "home") in args:
        return True
    env = _environ(pid)
    if f"RABBITMQ_NODENAME={settings.node}" in env:
        return True
    return os.path.basename(args[0]) == "epmd" and (
        str(settings.epmd_port) in args or f"ERL_EPMD_PORT={settings.epmd_port}" in env)


def node_pids(state_dir) -> list[int]:
    """PIDs of live processes that belong to this state dir's node or its epmd."""
    settings = load_settings(state_dir)
    if settings is None:
        return []
    root = broker_dir(state_dir)
    return [int(entry.name) for entry in Path("/proc").iterdir()
            if entry.name.isdigit() and _belongs(int(entry.name), settings, root)]


def _beam_pid(state_dir) -> int | None:
    settings = load_settings(state_dir)
    pid = _pid(state_dir)
    if settings is None or pid is None:
        return None
    return pid if _belongs(pid, settings, broker_dir(state_dir)) else None


def is_running(state_dir) -> bool:
    """True when this state dir's node is up and accepts AMQP connections."""
    settings = load_settings(state_dir)
    if settings is None or _beam_pid(state_dir) is None:
        return False
    with socket.socket() as sock:
        sock.settimeout(1.0)
        return sock.connect_ex(("127.0.0.1", settings.port)) == 0


def running_url(state_dir) -> str | None:
    """The URL of the node if it is running, else None; never raises."""
    try:
        settings = load_settings(state_dir)
        return settings.url if settings and is_running(state_dir) else None
    except OSError:
        return None


def _start_epmd(settings: Settings, env: dict[str, str]) -> None:
    """Our own epmd on our own port; it daemonizes, so it is never our child."""
    epmd = shutil.which("epmd") or "/usr/bin/epmd"
    subprocess.run([epmd, "-port", str(settings.epmd_port), "-address", "127.0.0.1",
                    "-daemon"], env=env, check=True, timeout=10,
                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)


def start(state_dir, port: int | None = None, dist_port: int | None = None,
          epmd_port: int | None = None, timeout: float = START_TIMEOUT, tls: bool = True,
          tls_port: int | None = None, management: bool | None = None) -> str:
    """Start the node (no-op if running) and return its plain URL once it accepts connections.

    ``tls`` adds the amqps listener (``Settings.tls_url``); ``management`` enables the
    management plugin on a free port of 127.0.0.1 (``Settings.management_url``), None keeps
    what the last start chose.
    """
    _check_installed()
    if is_running(state_dir):
        return load_settings(state_dir).url
    settings = _prepare(state_dir, port, dist_port, epmd_port, tls, tls_port, management)
    port_deadline = time.monotonic() + 10.0
    while not _port_free(settings.port) and time.monotonic() < port_deadline:
        time.sleep(0.1)  # a node killed a moment ago may still hold it
    if not _port_free(settings.port):
        raise BrokerError(f"port {settings.port} is already in use; choose another with "
                          f"--port or PCLOUD_BROKER_PORT")
    if settings.tls_port and not _port_free(settings.tls_port):
        raise BrokerError(f"amqps port {settings.tls_port} is already in use; choose another "
                          "with --tls-port")
    env = _env(state_dir, settings)
    with contextlib.suppress(FileNotFoundError):
        (broker_dir(state_dir) / "pid").unlink()
    _start_epmd(settings, env)
    subprocess.run([str(RABBIT_BIN / "rabbitmq-server"), "-detached"], env=env, check=True,
                   timeout=30, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if is_running(state_dir) and _listening(settings):
            return settings.url
        time.sleep(0.1)
    log_file = broker_dir(state_dir) / "log"
    raise BrokerError(f"RabbitMQ node {settings.node} did not start within {timeout:g} s; "
                      f"see the logs in {log_file}")


def _listening(settings: Settings) -> bool:
    """The amqps and management listeners accept too (they open after the AMQP one)."""
    for port in (settings.tls_port, settings.management_port):
        if port:
            with socket.socket() as sock:
                sock.settimeout(1.0)
                if sock.connect_ex(("127.0.0.1", port)) != 0:
                    return False
    return True


def _wait_gone(pids: list[int], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any(Path(f"/proc/{pid}").exists() and not _is_zombie(pid) for pid in pids):
            return True
        time.sleep(0.05)
    return False


def _kill(pids: list[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def stop(state_dir, timeout: float = STOP_TIMEOUT) -> bool:
    """Stop the node and our epmd; returns False when nothing was running."""
    settings = load_settings(state_dir)
    if settings is None:
        return False
    beam = _beam_pid(state_dir)
    if beam is not None:
        _kill([beam], signal.SIGTERM)
        if not _wait_gone([beam], timeout):
            _kill([beam], signal.SIGKILL)
            _wait_gone([beam], 5.0)
    leftovers = node_pids(state_dir)
    _kill(leftovers, signal.SIGTERM)
    if not _wait_gone(leftovers, 5.0):
        _kill(leftovers, signal.SIGKILL)
        _wait_gone(leftovers, 5.0)
    return beam is not None


def kill9(state_dir) -> None:
    """Kill the node with SIGKILL (its epmd stays, as after a crash); for recovery tests."""
    beam = _beam_pid(state_dir)
    if beam is None:
        raise BrokerError("the private broker is not running")
    helpers = [pid for pid in node_pids(state_dir) if "epmd" not in " ".join(_cmdline(pid))]
    _kill([beam], signal.SIGKILL)
    _wait_gone([beam, *helpers], 10.0)


def restart(state_dir, timeout: float = START_TIMEOUT) -> str:
    """Clean stop then start, keeping name, ports, credentials and data."""
    settings = load_settings(state_dir)
    stop(state_dir)
    if settings is None:
        raise BrokerError("no private broker was ever started in this state dir")
    return start(state_dir, settings.port, settings.dist_port, settings.epmd_port, timeout,
                 tls=bool(settings.tls_port), tls_port=settings.tls_port)
