"""The DPE's per-boot agent logins: when broker administration runs (issue 13's boot storm).

The issuer records what it is asked; the policy under test is :class:`AgentLogins`' batching,
with a 50 ms administration delay instead of 5 s.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from support.waiting import wait_until

from dpe_agent.identity import AgentLogins
from dpe_agent.store import DpeStore
from pcloud import identity
from pcloud.identity import Credentials

DELAY = 0.05


class RecordingIssuer:
    """Mints logins in memory and records every batch."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.issued: list[list[str]] = []
        self.revoked: list[list[str]] = []

    def issue(self, assemblies: list[str], generation: str = "") -> dict[str, Credentials]:
        with self.lock:
            self.issued.append(list(assemblies))
        return {a: identity.agent_spec("dep1", a, generation).credentials for a in assemblies}

    def revoke(self, users: list[str]) -> None:
        with self.lock:
            self.revoked.append(list(users))

    def prune(self, keep: list[str], generation: str = "") -> None:
        pass


@pytest.fixture
def logins(tmp_path: Path):
    issuer = RecordingIssuer()
    store = DpeStore(tmp_path / "dpe.sqlite")
    pool = ThreadPoolExecutor(4)
    logins = AgentLogins(issuer, store, pool, admin_delay=DELAY)
    logins.start(["a1", "a2"])
    wait_until(lambda: issuer.issued, 5, "the first spares")
    yield logins, issuer
    pool.shutdown(wait=True)
    store.close()


def test_a_boot_refills_its_spare_after_the_delay(logins) -> None:
    agent_logins, issuer = logins
    agent_logins.for_boot("a1")
    wait_until(lambda: ["a1"] in issuer.issued, 5, "a1's spare refilled")


def test_refills_wait_while_boots_take_turns_and_follow_when_they_end(logins) -> None:
    agent_logins, issuer = logins
    agent_logins.hold_refills(True)
    agent_logins.for_boot("a1")
    agent_logins.for_boot("a2")
    time.sleep(DELAY * 6)                   # several batch delays pass: nothing is minted
    assert issuer.issued == [["a1", "a2"]], issuer.issued
    agent_logins.hold_refills(False)
    wait_until(lambda: ["a1", "a2"] in issuer.issued[1:], 5, "the held refills, in one batch")


def test_revocations_are_never_held(logins) -> None:
    agent_logins, issuer = logins
    agent_logins.hold_refills(True)
    first = agent_logins.for_boot("a1").user
    agent_logins.for_boot("a1")             # the next boot: no spare yet, minted at once
    wait_until(lambda: [first] in issuer.revoked, 5, "the previous boot's login revoked")
    assert ["a1"] in issuer.issued[1:], "the second boot did not mint its own login"


def test_a_hold_ends_by_itself_after_its_limit(logins, monkeypatch) -> None:
    agent_logins, issuer = logins
    monkeypatch.setattr("dpe_agent.identity.REFILL_HOLD_MAX", DELAY * 2)
    agent_logins.hold_refills(True)
    agent_logins.for_boot("a1")
    wait_until(lambda: ["a1"] in issuer.issued[1:], 5, "a1's spare after the hold's limit")
