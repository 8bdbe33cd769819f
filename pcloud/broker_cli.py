"""``pcloud-broker start|stop|status|url``: manage pcloud's private RabbitMQ node."""

from __future__ import annotations

import argparse
import sys

from pcloud import broker, config
from pcloud.urls import mask_url

EXIT_NOT_RUNNING = 3


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pcloud-broker",
        description="Run pcloud's own RabbitMQ node (AMQP 1.0 plugin, 127.0.0.1 only, own "
                    "epmd) under STATE_DIR/broker. 'status' exits 0 when running, 3 when not.")
    parser.add_argument("command", choices=["start", "stop", "status", "url"])
    parser.add_argument("--state-dir", default=None,
                        help="state directory (default: $PCLOUD_STATE_DIR or /var/lib/pcloud)")
    parser.add_argument("--port", type=int, default=None,
                        help=f"AMQP port (default: $PCLOUD_BROKER_PORT, the port used last "
                             f"time, or {broker.DEFAULT_PORT})")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    state = args.state_dir or str(config.state_dir())
    try:
        if args.command == "start":
            if broker.is_running(state):
                print(f"pcloud broker already running: {mask_url(broker.running_url(state))}")
                return 0
            url = broker.start(state, port=args.port)
            print(f"pcloud broker started: {mask_url(url)} ('pcloud-broker url' prints it "
                  "with its password)")
        elif args.command == "stop":
            was = broker.stop(state)
            print("pcloud broker stopped" if was else "pcloud broker was not running")
        elif args.command == "status":
            settings = broker.load_settings(state)
            if settings is None or not broker.is_running(state):
                print("pcloud broker is not running")
                return EXIT_NOT_RUNNING
            print(f"pcloud broker running: node {settings.node}, port {settings.port}")
        else:
            url = broker.running_url(state)
            if url is None:
                print("pcloud broker is not running", file=sys.stderr)
                return EXIT_NOT_RUNNING
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
