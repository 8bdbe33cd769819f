"""Where pcloud finds its broker and its state.

Order for the broker URL: ``PCLOUD_BROKER_URL``; the config file (``$PCLOUD_CONFIG`` or
``/etc/pcloud/pcloud.conf``, section ``[bus]``, key ``url``); the private broker set up by
``pcloud-broker`` in the state dir, whether or not it runs now (falling back to another
broker would talk to someone else's, with the wrong credentials); else
``amqp://127.0.0.1:5672`` (the contract's default), which on most hosts is the machine's own
RabbitMQ: never used silently, :func:`default_broker_note` says so and how to point at
pcloud's own broker instead.

TLS options for ``amqps://`` URLs come from ``[bus]`` keys ``ca``, ``cert``, ``key``,
``verify`` (``true``/``false``) or the environment ``PCLOUD_TLS_CA``, ``PCLOUD_TLS_CERT``,
``PCLOUD_TLS_KEY``, ``PCLOUD_TLS_VERIFY``.
"""

from __future__ import annotations

import configparser
import os
from dataclasses import dataclass
from pathlib import Path

DEFAULT_CONFIG = "/etc/pcloud/pcloud.conf"
DEFAULT_STATE_DIR = "/var/lib/pcloud"
DEFAULT_BROKER_URL = "amqp://127.0.0.1:5672"


def config_path() -> Path:
    """The configuration file in use (it need not exist)."""
    return Path(os.environ.get("PCLOUD_CONFIG") or DEFAULT_CONFIG)


def section(name: str) -> dict[str, str]:
    """One section of the config file ({} when the file or the section is missing)."""
    parser = configparser.ConfigParser()
    try:
        parser.read(config_path(), encoding="utf-8")
    except (OSError, configparser.Error):
        return {}
    return dict(parser[name]) if parser.has_section(name) else {}


def state_dir() -> Path:
    """Directory of pcloud's own files (CPE store, DPE state, private broker)."""
    return Path(os.environ.get("PCLOUD_STATE_DIR") or DEFAULT_STATE_DIR)


def broker_choice() -> tuple[str, str]:
    """The broker URL to use and where it came from: ``environment``, ``config``,
    ``private`` (the state dir's pcloud-broker) or ``default``."""
    url = os.environ.get("PCLOUD_BROKER_URL")
    if url:
        return url, "environment"
    url = section("bus").get("url")
    if url:
        return url, "config"
    from pcloud import broker

    try:
        settings = broker.load_settings(state_dir())
    except OSError:
        settings = None
    return (settings.url, "private") if settings is not None else (DEFAULT_BROKER_URL,
                                                                   "default")


def broker_url() -> str:
    """The broker URL to use, see the module docstring for the order."""
    return broker_choice()[0]


def default_broker_note() -> str:
    """Why the default URL is in use and how to point at pcloud's own broker instead."""
    from pcloud.urls import mask_url

    return (f"no broker configured (PCLOUD_BROKER_URL, [bus] url in {config_path()}, or a "
            f"pcloud-broker in the state dir {state_dir()}), so {mask_url(DEFAULT_BROKER_URL)} is "
            "used, which is this host's own RabbitMQ if one runs: export PCLOUD_STATE_DIR "
            "to the state dir of your cped (its pcloud-broker is found there), or start "
            "pcloud's broker with 'pcloud-broker start'")


def broker_hint(url: str) -> str | None:
    """What to do when ``url`` cannot be reached, when pcloud can tell: start the state
    dir's private broker, or configure one instead of the default."""
    from pcloud import broker

    try:
        settings = broker.load_settings(state_dir())
        down = settings is not None and settings.url == url and not broker.is_running(
            state_dir())
    except OSError:
        down = False
    if down:
        return f"the private broker of {state_dir()} is not running: pcloud-broker start"
    if url == DEFAULT_BROKER_URL and broker_choice() == (url, "default"):
        return ("no broker configured: export PCLOUD_STATE_DIR (of your cped) or "
                "PCLOUD_BROKER_URL, or run 'pcloud-broker start'")
    return None


def unreachable(url: str, error: object) -> str:
    """The sentence for "no connection to ``url``": password masked, and how to fix it when
    pcloud can tell (:func:`broker_hint`)."""
    from pcloud.urls import mask_url, mask_urls

    text = f"cannot reach the broker at {mask_url(url)}"
    hint = broker_hint(url)
    if hint and hint.startswith("the private broker"):
        return f"{text} ({hint})"
    text = f"{text}: {mask_urls(str(error))}"
    return f"{text} ({hint})" if hint else text


@dataclass(frozen=True)
class TLSOptions:
    """Client TLS settings for ``amqps://``; ``verify`` checks certificate and peer name."""

    ca: str | None = None
    cert: str | None = None
    key: str | None = None
    verify: bool = True
    #: the name the broker's certificate must carry when the URL's host is not it: a VM
    #: reaches the broker through a forward address (``10.0.2.100``), never by its name
    server_name: str | None = None


def tls_options() -> TLSOptions:
    """TLS settings from the environment, then the config file."""
    bus = section("bus")

    def pick(name: str) -> str | None:
        return os.environ.get(f"PCLOUD_TLS_{name.upper()}") or bus.get(name) or None

    verify = (pick("verify") or "true").strip().lower() not in ("0", "false", "no", "off")
    return TLSOptions(ca=pick("ca"), cert=pick("cert"), key=pick("key"), verify=verify,
                      server_name=pick("server_name"))
