"""What an attacker inside one assembly can do, and a client that signs its requests.

``Attacker`` speaks raw AMQP 1.0 (qpid-proton's blocking API, none of pcloud's bus code)
with the login an assembly holds (its credentials file). Every attempt opens a connection of
its own, because the broker ends the session (often the connection) of a party that exceeds
its permissions; an attempt reports what happened instead of raising, so that a test checks
the *effect* afterwards (a refused attach shows up as a timeout: RabbitMQ ends the session
without answering the attach).

``SignedClient`` is ``support.cpe.AmqpClient`` (``user_id`` = its login on every request:
receivers drop a request that does not say who sent it, DESIGN §3) with data-section bodies
and no check of an answer's envelope. ``signed_cped`` is ``running_cped`` with that client.
"""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.parse
import uuid
from collections.abc import Callable
from contextlib import AbstractContextManager, suppress
from dataclasses import dataclass, field
from pathlib import Path

from proton import Delivery, Endpoint, Message
from proton._utils import BlockingReceiver, Fetcher
from proton.utils import BlockingConnection

from pcloud import wire
from pcloud.bus import Bus, BusError
from pcloud.credentials import read_credentials_file, with_credentials
from pcloud.identity import Credentials, agent_of
from pcloud.urls import mask_urls
from support.cpe import AmqpClient, CpedProcess, running_cped

#: how long an attempt waits for the broker: a refusal never answers, it ends the session
ATTEMPT_TIMEOUT = 3.0


def login_of(url: str) -> str:
    return urllib.parse.unquote(urllib.parse.urlsplit(url).username or "")


def password_of(url: str) -> str:
    return urllib.parse.unquote(urllib.parse.urlsplit(url).password or "")


class SignedClient(AmqpClient):
    """``AmqpClient`` that sends every body as a data section (as pcloud does), asks for
    every event of a deployable, and leaves an answer's envelope unchecked: these tests
    look at what was answered and what it did."""

    EVENTS_LIMIT = 100000

    def send_raw(self, queue: str, subject: str | None, body: str,
                 opcode: str = "method_request") -> str:
        return super().send_raw(queue, subject, body.encode(), opcode)

    def check_envelope(self, msg: Message, method: str | None) -> None:
        """Not checked here."""


def signed_cped(state_dir: Path, url: str
                ) -> AbstractContextManager[tuple[CpedProcess, SignedClient]]:
    """``running_cped`` with the owner's signing client; its deployables get 60 s to stop."""
    return running_cped(state_dir, url, SignedClient, stop_timeout=60.0)


# --- what an assembly holds ----------------------------------------------------------------

def assembly_dir(state_dir: Path, dep: str, asm: str) -> Path:
    return state_dir / "dpe" / dep / "assemblies" / asm


def stolen_login(state_dir: Path, dep: str, asm: str) -> Credentials:
    """The agent login a sandbox holds (its credentials file), read as its tenant would."""
    return read_credentials_file(assembly_dir(state_dir, dep, asm) / "credentials")[0]


def sandbox_pid(state_dir: Path, dep: str, asm: str) -> int | None:
    try:
        info = json.loads((assembly_dir(state_dir, dep, asm) / "sandbox.pid").read_text())
    except (OSError, ValueError):
        return None
    return int(info["pid"])


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it (through /proc/<pid>/task/*/children)."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        for task in Path(f"/proc/{current}/task").glob("*"):
            with suppress(OSError, ValueError):
                todo.extend(int(c) for c in (task / "children").read_text().split())
    return found


def kill9(pid: int) -> None:
    with suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def logs_in(url: str, credentials: Credentials, timeout: float = 10.0) -> bool:
    """Whether the broker takes this login (pcloud's own Bus, as an agent would use it)."""
    bus = Bus(with_credentials(url, credentials), name="test-stolen-login")
    try:
        bus.start(timeout=timeout)
    except BusError:
        return False
    bus.close()
    return True


# --- the attacker --------------------------------------------------------------------------

@dataclass
class Outcome:
    """What one attempt did: ``error`` is None when nothing refused it that we could see."""

    what: str
    error: str | None = None
    received: list[Message] = field(default_factory=list)

    @property
    def refused(self) -> bool:
        return self.error is not None


class Attacker:
    """Raw AMQP 1.0 with a stolen login; each attempt is a connection of its own."""

    def __init__(self, broker_url: str, credentials: Credentials) -> None:
        self.url = with_credentials(broker_url, credentials)
        self.user = credentials.user
        self.outcomes: list[Outcome] = []

    def __repr__(self) -> str:          # never show the password
        return f"Attacker({self.user})"

    def _attempt(self, what: str, action: Callable[[BlockingConnection, Outcome], None],
                 timeout: float) -> Outcome:
        outcome = Outcome(what)
        conn = None
        try:
            conn = BlockingConnection(self.url, timeout=timeout, allowed_mechs="PLAIN")
            action(conn, outcome)
        except Exception as exc:     # the broker's refusal, in whatever form proton gives it
            outcome.error = mask_urls(f"{type(exc).__name__}: {exc}")
        finally:
            if conn is not None:
                with suppress(Exception):
                    conn.close()
        self.outcomes.append(outcome)
        return outcome

    def send(self, address: str, body: str, subject: str | None, opcode: str,
             reply_to: str | None = None, user_id: str | None = None, count: int = 1,
             timeout: float = ATTEMPT_TIMEOUT) -> Outcome:
        """Send ``count`` messages to ``address`` (a queue name or ``/topic/KEY``)."""
        def action(conn: BlockingConnection, outcome: Outcome) -> None:
            link = conn.container.create_sender(conn.conn, address)
            _opened(conn, link, timeout)
            for _ in range(count):
                delivery = link.send(message(body, subject, opcode, user_id or self.user,
                                             reply_to))
                conn.wait(lambda d=delivery: d.settled or _ended(link) is not None,
                          timeout=timeout, msg=f"sending to {address}")
                _check_open(link)
                if delivery.remote_state in (Delivery.REJECTED, Delivery.RELEASED):
                    raise RuntimeError(f"delivery {delivery.remote_state}")
        return self._attempt(f"send {subject} to {address}", action, timeout)

    def request(self, queue: str, method: str, body: str) -> Outcome:
        """A method request, answered (if ever) on the attacker's own agent queue."""
        return self.send(queue, body, method, "method_request", reply_to=self.own_queue)

    def receive(self, address: str, seconds: float,
                during: Callable[[], None] | None = None,
                timeout: float = ATTEMPT_TIMEOUT) -> Outcome:
        """Attach a receiver to ``address``, run ``during()`` (legitimate traffic that a
        thief would get), and keep whatever arrives within ``seconds``."""
        def action(conn: BlockingConnection, outcome: Outcome) -> None:
            fetcher = Fetcher(conn, 100)
            link = conn.container.create_receiver(conn.conn, address, handler=fetcher)
            _opened(conn, link, timeout)
            receiver = BlockingReceiver(conn, link, fetcher, credit=100)
            if during is not None:
                during()
            deadline = time.monotonic() + seconds
            while (left := deadline - time.monotonic()) > 0:
                try:
                    msg = receiver.receive(timeout=left)
                except Exception as exc:
                    if type(exc).__name__ == "Timeout":
                        break
                    raise
                outcome.received.append(msg)
                receiver.accept()
        return self._attempt(f"receive from {address}", action, timeout)

    @property
    def own_queue(self) -> str:
        dep, asm = agent_of(self.user) or ("?", "?")
        return f"pcloud.agent.{dep}.{asm}"


def _ended(link) -> str | None:
    """Why the broker ended this link, its session or its connection (None: it did not)."""
    for endpoint in (link, link.session, link.connection):
        if endpoint.state & Endpoint.REMOTE_CLOSED:
            return f"{type(endpoint).__name__} ended: {endpoint.remote_condition}"
    return None


def _check_open(link) -> None:
    why = _ended(link)
    if why is not None:
        raise RuntimeError(f"refused by the broker ({why})")


def _opened(conn: BlockingConnection, link, timeout: float) -> None:
    """Wait until the broker attaches ``link`` or ends it (a refusal ends the session)."""
    conn.wait(lambda: _ended(link) is not None or not link.state & Endpoint.REMOTE_UNINIT,
              timeout=timeout, msg=f"attaching {link.name}")
    _check_open(link)


def message(body: str, subject: str | None, opcode: str, user_id: str,
            reply_to: str | None = None) -> Message:
    cid = str(uuid.uuid4())
    return Message(body=body.encode(), subject=subject, id=cid, correlation_id=cid,
                   reply_to=reply_to, content_type="application/xml",
                   user_id=user_id.encode(), properties={"pcloud.opcode": opcode})


class Publisher:
    """One connection that keeps publishing on one topic key it may use (no refusal
    expected); ``send`` raises if the broker ends it."""

    def __init__(self, url: str, key: str) -> None:
        self.user = login_of(url)
        self.conn = BlockingConnection(url, timeout=10, allowed_mechs="PLAIN")
        self.sender = self.conn.create_sender(f"/topic/{key}")

    def send(self, body: str, subject: str, opcode: str) -> None:
        self.sender.send(message(body, subject, opcode, self.user))

    def close(self) -> None:
        with suppress(Exception):
            self.conn.close()


# --- forged documents ----------------------------------------------------------------------

def heartbeat_xml(dep: str, asm: str, uuid_: str, seq: int, started: str,
                  interval: float = 0.5) -> str:
    return (f'<heartbeat deployable="{dep}" assembly="{asm}" uuid="{uuid_}" seq="{seq}" '
            f'started="{started}" pid="1" interval="{interval:g}" '
            f'time="{wire.now()}"/>')


def report_xml(dep: str, asm: str, rsc: str, uuid_: str, rc: int = 7,
               interval: int = 1000) -> str:
    return (f'<report deployable="{dep}" assembly="{asm}" resource="{rsc}" operation="monitor" '
            f'interval="{interval}" rc="{rc}" time="{wire.now()}" uuid="{uuid_}" '
            f'reason="process exited with signal 9"/>')


def event_xml(dep: str, seq: int, type_: str = "deployable_state_change",
              state: str = "stopped", asm: str | None = None, rsc: str | None = None) -> str:
    where = (f' assembly="{asm}"' if asm else "") + (f' resource="{rsc}"' if rsc else "")
    return (f'<event seq="{seq}" time="{wire.now()}" type="{type_}" deployable="{dep}"{where} '
            f'state="{state}" reason="forged"/>')
