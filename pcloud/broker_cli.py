"""``pcloud-broker start|stop|status|url|ca``: manage pcloud's private RabbitMQ node.

``url`` prints the plain loopback URL (tools on this host need it), ``url --tls`` the amqps
URL clients verify by name (``localhost``) against the CA whose path ``ca`` prints.
"""

from __future__ import annotations

import argparse
import sys

from pcloud import broker, config
from pcloud.urls import mask_url

EXIT_NOT_RUNNING = 3


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pcloud-broker",
        description="Run pcloud's own RabbitMQ node (AMQP 1.0 plugin, amqp and amqps on "
                    "127.0.0.1 only, own epmd) under STATE_DIR/broker. 'status' exits 0 when "
                    "running, 3 when not; 'ca' prints the path of the CA that signed the "
                    "node's TLS certificate.")
    parser.add_argument("command", choices=["start", "stop", "status", "url", "ca"])
    parser.add_argument("--state-dir", default=None,
                        help="state directory (default: $PCLOUD_STATE_DIR or /var/lib/pcloud)")
    parser.add_argument("--port", type=int, default=None,
                        help=f"AMQP port (default: $PCLOUD_BROKER_PORT, the port used last "
                             f"time, or {broker.DEFAULT_PORT})")
    parser.add_argument("--tls-port", type=int, default=None,
                        help=f"amqps port for 'start' (default: the port used last time, or "
                             f"{broker.DEFAULT_TLS_PORT} with the default AMQP port, or any "
                             f"free one)")
    parser.add_argument("--tls", action="store_true",
                        help="'url': print the amqps URL (host localhost) instead")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    state = args.state_dir or str(config.state_dir())
    try:
        if args.command == "start":
            if broker.is_running(state):
                print(f"pcloud broker already running: {mask_url(broker.running_url(state))}")
                return 0
            url = broker.start(state, port=args.port, tls_port=args.tls_port)
            settings = broker.load_settings(state)
            print(f"pcloud broker started: {mask_url(url)} and {mask_url(settings.tls_url)} "
                  "('pcloud-broker url [--tls]' prints them with the password, "
                  "'pcloud-broker ca' the CA to verify amqps with)")
        elif args.command == "stop":
            was = broker.stop(state)
            print("pcloud broker stopped" if was else "pcloud broker was not running")
        elif args.command == "status":
            settings = broker.load_settings(state)
            if settings is None or not broker.is_running(state):
                print("pcloud broker is not running")
                return EXIT_NOT_RUNNING
            tls = f", amqps port {settings.tls_port}" if settings.tls_port else ""
            print(f"pcloud broker running: node {settings.node}, port {settings.port}{tls}")
        elif args.command == "ca":
            settings = broker.load_settings(state)
            if settings is None or not settings.tls_ca:
                print("pcloud broker has no TLS CA yet: pcloud-broker start", file=sys.stderr)
                return EXIT_NOT_RUNNING
            print(settings.tls_ca)
        else:
            url = broker.running_url(state)
            if url is None:
                print("pcloud broker is not running", file=sys.stderr)
                return EXIT_NOT_RUNNING
            if args.tls:
                url = broker.load_settings(state).tls_url
                if url is None:
                    print("pcloud broker has no amqps listener", file=sys.stderr)
                    return 1
            print(url)
    except broker.NotInstalled as exc:
        print(exc, file=sys.stderr)
        return 1
    except (broker.BrokerError, OSError) as exc:
        print(f"pcloud-broker: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
