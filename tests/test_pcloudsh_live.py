"""The interactive shell's live events across broker outages, through a pty.

The shell reaches the real broker through a TCP relay the test opens and closes, so the
broker "goes away" and "comes back" for the shell alone (the session's broker keeps serving
every other test). The shell must start its live events when the broker first becomes
reachable, say when it is lost and when it is back, and show events again without ``watch``.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
from support.terminal import Terminal
from support.waiting import scaled

from pcloud import broker as private_broker
from pcloud.bus import Bus, Message
from pcloud.events import Event


class Relay:
    """Listens on ``port`` and pipes each connection to ``target``; ``close`` drops the
    listener and every connection at once, as a broker that died would."""

    def __init__(self, port: int, target: tuple[str, int]) -> None:
        self.port, self.target = port, target
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()

    def open(self) -> None:
        listener = socket.create_server(("127.0.0.1", self.port), reuse_port=False)
        self._keep(listener)
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def close(self) -> None:
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def _keep(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.append(sock)

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            self._keep(client)
            self._keep(upstream)
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)


def publish_until_shown(bus: Bus, term: Terminal, first_seq: int) -> int:
    """Publish events until the shell shows one (its subscription may still be attaching);
    the seq shown."""
    for seq in range(first_seq, first_seq + 20):
        event = Event(seq, None, "deployable_state_change", "livedep", state="running")
        bus.publish(event.topic_key(), Message(body=event.to_xml(),
                                               subject="deployable_state_change",
                                               opcode="event"))
        with contextlib.suppress(AssertionError):
            term.expect("livedep  deployable running", timeout=scaled(3))
            return seq
    raise AssertionError(f"no event shown; got {term.buffer[-2000:]!r}")


@pytest.mark.slow
def test_live_events_follow_the_broker_away_and_back(broker, bus: Bus, tmp_path: Path
                                                     ) -> None:
    parts = urlsplit(broker.url)
    port = private_broker.free_port()
    relay = Relay(port, (parts.hostname, parts.port))
    url = urlunsplit(parts._replace(netloc=parts.netloc.rsplit(":", 1)[0] + f":{port}"))
    term = Terminal(tmp_path, url, live=True)
    try:
        term.expect("(live events unavailable: cannot reach the broker", timeout=scaled(30))
        term.expect("they start when the broker can be reached)")
        relay.open()
        term.expect("(the broker is back: live events on)", timeout=scaled(60))
        seq = publish_until_shown(bus, term, 1)
        relay.close()
        term.expect("(lost the broker: live events paused until it is back)",
                    timeout=scaled(60))
        # a command now blames the broker at once, not a silent cped 15 s later
        term.send("deployable_list\r")
        term.expect("cannot reach the broker", timeout=scaled(10))
        relay.open()
        term.expect("(the broker is back: live events on)", timeout=scaled(60))
        publish_until_shown(bus, term, seq + 1)
        term.send("quit\r")
        assert term.wait_exit() == 0
    finally:
        term.close()
        relay.close()
