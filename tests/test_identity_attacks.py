"""Issue 9's acceptance: a tenant inside one assembly, holding everything it can read, harms
nothing outside it (docs/security.md).

One cped and two ``process`` deployables for the whole module: the victim ``vic`` (a1: s1)
and the attacker's own ``att`` (a1: s1, a2: s2). The attacker is the tenant of ``att/a1``:
it reads that sandbox's credentials file, as a process inside it could, and attacks with a
raw AMQP 1.0 client (``support.attacker``). Every test checks the effect afterwards: the
victims' resource pids, states and fail counts, the CPE's stored documents and event
history. The owner's client (the CPE's own login) only observes.
"""

from __future__ import annotations

import os
import stat
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from support.attacker import (
    Attacker,
    Publisher,
    SignedClient,
    assembly_dir,
    descendants,
    event_xml,
    heartbeat_xml,
    kill9,
    logs_in,
    password_of,
    report_xml,
    sandbox_pid,
    signed_cped,
    stolen_login,
)
from support.cpe import deployable_xml, service_pid, unique
from support.waiting import wait_until

from pcloud import identity, wire
from pcloud.broker_admin import admin_for
from pcloud.credentials import with_credentials
from pcloud.identity import Credentials

#: (assembly, service) of each deployable
VIC = {"a1": ["s1"]}
ATT = {"a1": ["s1"], "a2": ["s2"]}
#: a2 beats more slowly than a1, so that a1 and a2 never fall silent "at once" (a mass loss,
#: which fences nothing): a start that loses its first logins to the DPE's start-up prune
#: (test_a_starting_dpe_keeps_the_logins_it_just_issued) then heals by itself
A2_HEARTBEAT = 3
#: a DPE's start-up prune is one CPE call (the DPE gives up after 30 s); a deployable is
#: trusted once its DPE is older than this and every agent login works
PRUNE_BOUND = 10.0


def _att_xml(name: str) -> str:
    xml = deployable_xml(name, ATT)
    head, sep, tail = xml.partition('<assembly name="a2" heartbeat_interval="0.5">')
    assert sep, xml
    return f'{head}<assembly name="a2" heartbeat_interval="{A2_HEARTBEAT}">{tail}'


@dataclass
class World:
    state: Path
    url: str = field(repr=False)   # the broker, logged in as the CPE's owner account
    client: SignedClient           # the owner's client: observes, never attacks
    vic: str
    att: str
    uuids: dict[tuple[str, str], str]
    attacker: Attacker             # the tenant of att/a1, with its own credentials file
    passwords: set[str] = field(default_factory=set, repr=False)  # none may leak
    broken_starts: list[str] = field(default_factory=list)

    def pid(self, dep: str, asm: str, svc: str) -> int | None:
        return service_pid(self.state, dep, asm, svc)

    def victims(self) -> dict[tuple[str, str, str], int | None]:
        """Resources outside the attacker's assembly, with their pids."""
        return {(self.vic, "a1", "s1"): self.pid(self.vic, "a1", "s1"),
                (self.att, "a2", "s2"): self.pid(self.att, "a2", "s2")}

    def last_seq(self, dep: str) -> int:
        return max((int(e.get("seq")) for e in self.client.events(dep)), default=0)

    def remember_secrets(self) -> None:
        for path in self.state.glob("dpe/*/assemblies/*/credentials"):
            self.passwords.add(path.read_text().split("password=", 1)[1].split()[0])


def _settled(client: SignedClient, url: str, state: Path, dep: str,
             services: dict[str, list[str]]) -> bool:
    """Its DPE has outlived its start-up prune, everything runs, every login works."""
    dped = state / "dpe" / dep / "dped.pid"
    if not dped.exists() or time.time() - dped.stat().st_mtime < PRUNE_BOUND:
        return False
    status = client.status(dep)
    if status.get("state") != "running" or \
            {r.get("state") for r in status.iter("resource")} != {"running"}:
        return False
    return all(logs_in(url, stolen_login(state, dep, asm)) for asm in services)


@pytest.fixture(scope="module")
def world(broker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    state = tmp_path_factory.mktemp("identity-attacks")
    with signed_cped(state, broker.url) as (_cped, client):
        vic, att = unique("vic"), unique("att")
        client.call("deployable_start", deployable_xml(vic, VIC))
        client.call("deployable_start", _att_xml(att))
        first: dict[tuple[str, str], str] = {}
        for dep, services in ((vic, VIC), (att, ATT)):
            wait_until(lambda d=dep: client.status(d).get("state") == "running", 120,
                       f"{dep} running")
            first.update({(dep, asm): stolen_login(state, dep, asm).user for asm in services})
        for dep, services in ((vic, VIC), (att, ATT)):
            wait_until(lambda d=dep, s=services: _settled(client, broker.url, state, d, s),
                       180, f"{dep} settled with working agent logins", step=1.0)
        # a first boot whose login did not last: the start-up prune took it
        broken = [f"{dep}/{asm}" for (dep, asm), user in first.items()
                  if stolen_login(state, dep, asm).user != user]
        uuids = {(dep, a.get("name")): a.get("uuid")
                 for dep in (vic, att) for a in client.status(dep)}
        assert all(uuids.values()), uuids
        world = World(state, broker.url, client, vic, att, uuids,
                      Attacker(broker.url, stolen_login(state, att, "a1")),
                      broken_starts=broken)
        world.passwords.add(password_of(broker.url))
        world.remember_secrets()
        yield world


@pytest.fixture(scope="module")
def people(world: World) -> Iterator[dict[str, Credentials]]:
    """An observer and an operator, made through the broker-administration seam."""
    admin = admin_for(os.environ["PCLOUD_BROKER_ADMIN"])
    specs = {role: identity.client_spec(unique(role[:3]), role)
             for role in ("observer", "operator")}
    admin.put_users(list(specs.values()))
    world.passwords.update(spec.password for spec in specs.values())
    yield {role: spec.credentials for role, spec in specs.items()}
    admin.delete_users([spec.user for spec in specs.values()])


def _assert_unharmed(world: World, before: dict, since: dict[str, int],
                     own_restart: bool = False) -> None:
    """Nothing outside the attacker's assembly restarted, failed or changed state, and no
    event but a config_error was stored for the victims (``own_restart``: the attacker's
    own resource was restarted, which moves its deployable through ``recovering``)."""
    assert all(before.values()), before
    assert world.victims() == before
    for dep, asms in ((world.vic, ["a1"]), (world.att, ["a2"])):
        status = world.client.status(dep)
        assert status.get("state") == "running", dep
        for assembly in status:
            if assembly.get("name") not in asms:
                continue
            assert assembly.get("state") == "running"
            assert [(r.get("state"), r.get("fail_count")) for r in assembly] == \
                [("running", "0")]
        kinds = {(e.get("type"), e.get("assembly"))
                 for e in world.client.events(dep, since[dep])}
        watched = asms if own_restart and dep == world.att else [None, *asms]
        assert {k for k in kinds if k[0] != "config_error" and k[1] in watched} == set()


def _baseline(world: World) -> tuple[dict, dict[str, int]]:
    return world.victims(), {dep: world.last_seq(dep) for dep in (world.vic, world.att)}


# --- what the attacker holds -----------------------------------------------------------------

def test_the_attacker_holds_its_assemblys_login_and_only_that(world: World) -> None:
    creds = assembly_dir(world.state, world.att, "a1") / "credentials"
    assert stat.S_IMODE(creds.stat().st_mode) == 0o600
    assert stat.S_IMODE(creds.parent.stat().st_mode) == 0o700
    assert identity.agent_of(world.attacker.user) == (world.att, "a1")
    assert logs_in(world.url, stolen_login(world.state, world.att, "a1"))
    # the login is the one the running agent uses: its own queue is consumable, and what
    # it consumes there would otherwise go to its agent (the agent keeps running)
    own = world.attacker.receive(world.attacker.own_queue, 0.5)
    assert not own.refused, own
    other_users = {stolen_login(world.state, dep, asm).user
                   for dep, asm in ((world.vic, "a1"), (world.att, "a2"))}
    assert world.attacker.user not in other_users


# --- requests: stop, start, reload --------------------------------------------------------------

def test_no_start_stop_or_reload_through_the_cpe(world: World, tmp_path: Path) -> None:
    before, since = _baseline(world)
    listing = world.client.listing()
    marker = tmp_path / "owned"
    intruder = unique("intruder")
    start = deployable_xml(intruder, VIC).replace(
        'value="sleep', f'value="touch {marker} ; sleep').replace(
        '<parameters>', '<parameters><parameter name="shell" value="true"/>')
    reload = deployable_xml(world.vic, {"a1": ["s1"], "a9": ["s9"]})
    stop = f'<deployable name="{world.vic}"/>'
    for address in ("pcloud.cpe", "/queue/pcloud.cpe", "/amq/queue/pcloud.cpe",
                    "/exchange/amq.default/pcloud.cpe", "/topic/pcloud.cpe"):
        for method, body in (("deployable_stop", stop), ("deployable_start", start),
                             ("deployable_reload", reload),
                             ("deployable_stop", f'<deployable name="{world.att}"/>')):
            world.attacker.request(address, method, body)
        # a foreign client names the method in the body (DESIGN §3)
        world.attacker.send(address, f'<request method="deployable_stop">{stop}</request>',
                            None, "method_request", reply_to=world.attacker.own_queue)
    assert world.client.listing() == listing
    assert not marker.exists()
    assert [a.get("name") for a in world.client.status(world.vic)] == ["a1"]
    _assert_unharmed(world, before, since)


@pytest.mark.parametrize("target", ["victim", "own"])
def test_dpe_queues_refuse_every_method_from_an_assembly(world: World, target: str) -> None:
    """deployable_stop/reload/status, event_raise, and deployable_start straight to a DPE's
    queue: the attacker may not write to any queue, its own deployable's DPE included."""
    before, since = _baseline(world)
    dep = world.vic if target == "victim" else world.att
    own_status = world.client.status(world.att)
    queue = f"pcloud.dpe.{dep}"
    ref = f'<deployable name="{dep}"/>'
    reload = deployable_xml(dep, {"a1": ["s1"]})      # would drop att's a2
    for method, body in (("deployable_stop", ref), ("deployable_reload", reload),
                         ("deployable_start", reload), ("reload", reload),
                         ("event_raise", f'<event type="config_error" deployable="{dep}" '
                                         'reason="forged"/>')):
        outcome = world.attacker.request(queue, method, body)
        assert outcome.refused, outcome
    # nor by a wildcard topic binding to a queue, nor to the DPE's reply topic
    world.attacker.send(f"/topic/pcloud.dpe.{dep}", ref, "deployable_stop", "method_request")
    assert [a.get("name") for a in world.client.status(world.att)] == \
        [a.get("name") for a in own_status] == ["a1", "a2"]
    _assert_unharmed(world, before, since)


def test_agent_queues_of_others_take_no_request(world: World) -> None:
    """resource_stop to the victim's and the sibling's agents (no write on any queue)."""
    before, since = _baseline(world)
    for dep, asm, svc in ((world.vic, "a1", "s1"), (world.att, "a2", "s2")):
        body = (f'<resource_op operation="stop" interval="0" timeout="20000"><resource '
                f'name="{svc}" class="process"/></resource_op>')
        outcome = world.attacker.request(f"pcloud.agent.{dep}.{asm}", "resource_stop", body)
        assert outcome.refused, outcome
    _assert_unharmed(world, before, since)


def test_an_observer_reads_but_cannot_stop_start_or_reload(world: World, people) -> None:
    before, since = _baseline(world)
    observer = SignedClient(with_credentials(world.url, people["observer"]))
    try:
        # its role is read from the broker's tags (cached; a new name is looked up again)
        wait_until(lambda: observer.request("pcloud.cpe", "deployable_status",
                                            f'<deployable name="{world.vic}"/>').get("rc")
                   == "0", 15, "the observer's deployable_status")
        assert observer.status(world.vic).get("state") == "running"
        assert world.vic in observer.listing()
        assert len(observer.events(world.vic)) > 0
        for method, body in (("deployable_stop", f'<deployable name="{world.vic}"/>'),
                             ("deployable_reload", deployable_xml(world.vic, VIC)),
                             ("deployable_start", deployable_xml(unique("obs"), VIC))):
            code, message = observer.error(method, body)
            assert code == "not_authorized", message
            assert "observer" in message
        # the DPE's own queue: only the CPE calls it
        code, _ = observer.error("deployable_stop", f'<deployable name="{world.vic}"/>',
                                 queue=f"pcloud.dpe.{world.vic}")
        assert code == "not_authorized"
    finally:
        observer.close()
    _assert_unharmed(world, before, since)


def test_even_an_operator_cannot_call_a_dpe_directly(world: World, people) -> None:
    """The broker lets an operator write to any queue; the DPE itself takes calls only
    from the CPE's login, so the CPE's stored document always matches."""
    before, since = _baseline(world)
    operator = SignedClient(with_credentials(world.url, people["operator"]))
    try:
        queue = f"pcloud.dpe.{world.vic}"
        for method, body in (("deployable_stop", f'<deployable name="{world.vic}"/>'),
                             ("deployable_reload",
                              deployable_xml(world.vic, {"a1": ["s1"], "a9": ["s9"]}))):
            code, message = operator.error(method, body, queue=queue)
            assert code == "not_authorized", message
    finally:
        operator.close()
    assert [a.get("name") for a in world.client.status(world.vic)] == ["a1"]
    _assert_unharmed(world, before, since)


# --- forged reports, events ---------------------------------------------------------------------

def test_forged_reports_restart_nothing_outside_the_attackers_assembly(world: World) -> None:
    before, since = _baseline(world)
    vic, att, uuids = world.vic, world.att, world.uuids
    # on the victims' own keys: the broker refuses (topic permissions)
    for dep, asm, svc in ((vic, "a1", "s1"), (att, "a2", "s2")):
        outcome = world.attacker.send(f"/topic/pcloud.report.{dep}.{asm}",
                                      report_xml(dep, asm, svc, uuids[(dep, asm)]),
                                      "resource_report", "report", count=5)
        assert outcome.refused, outcome
    # on its own key, naming the sibling or the victim: the broker lets it through, the DPE
    # drops it (only a2's current login reports for a2; vic's DPE never sees att's keys)
    own = Publisher(world.attacker.url, f"pcloud.report.{att}.a1")
    own_pid = world.pid(att, "a1", "s1")
    try:
        for _ in range(5):      # enough failures to escalate, were they believed
            own.send(report_xml(att, "a2", "s2", uuids[(att, "a2")]), "resource_report",
                     "report")
            own.send(report_xml(vic, "a1", "s1", uuids[(vic, "a1")]), "resource_report",
                     "report")
        # control: the same channel does reach the DPE. Reports are taken in order, so once
        # this one (about its own resource, which is the tenant's business) has restarted
        # s1, the forged ones before it were seen and dropped.
        own.send(report_xml(att, "a1", "s1", uuids[(att, "a1")]), "resource_report", "report")
    finally:
        own.close()
    wait_until(lambda: world.pid(att, "a1", "s1") not in (None, own_pid), 30,
               "the attacker's own s1 restarted by its own report")
    wait_until(lambda: world.client.status(att).get("state") == "running", 30,
               f"{att} running again")
    _assert_unharmed(world, before, since, own_restart=True)


def test_forged_events_neither_erase_history_nor_block_later_events(world: World) -> None:
    vic = world.vic
    history = world.client.events(vic)
    own_history = world.client.events(world.att)
    before, since = _baseline(world)
    last = max(int(e.get("seq")) for e in history)
    forged = [(f"pcloud.event.{vic}.-.-", event_xml(vic, 9_000_000_000)),
              (f"pcloud.event.{vic}.-.-", event_xml(vic, last + 1)),
              (f"pcloud.event.{vic}.a1.s1", event_xml(vic, last + 2, "resource_state_change",
                                                      "failed", "a1", "s1")),
              (f"pcloud.event.{world.att}.-.-", event_xml(world.att, 9_000_000_000))]
    for key, body in forged:
        outcome = world.attacker.send(f"/topic/{key}", body, "deployable_state_change",
                                      "event")
        assert outcome.refused, outcome
    # the CPE's own login may publish anywhere: its store still believes only dpe.<vic>
    owner = Publisher(world.url, f"pcloud.event.{vic}.-.-")
    try:
        owner.send(event_xml(vic, 9_000_000_000), "deployable_state_change", "event")
        owner.send(event_xml(vic, last + 1), "deployable_state_change", "event")
    finally:
        owner.close()
    # a real event after the forgeries: a refused duplicate start, numbered by vic's DPE
    world.client.error("deployable_start", deployable_xml(vic, VIC))
    wait_until(lambda: len(world.client.events(vic)) > len(history), 20,
               "the real config_error stored")
    after = world.client.events(vic)
    assert [e.get("seq") for e in after[:len(history)]] == [e.get("seq") for e in history]
    new = after[len(history):]
    assert [e.get("type") for e in new] == ["config_error"]
    assert int(new[0].get("seq")) == last + 1
    assert all(e.get("reason") != "forged" for e in after)
    assert world.client.status(vic).get("state") == "running"
    assert [e.get("seq") for e in world.client.events(world.att)][:len(own_history)] == \
        [e.get("seq") for e in own_history]
    _assert_unharmed(world, before, since)


# --- stealing requests and events ------------------------------------------------------------

def test_no_stolen_requests_nor_events(world: World) -> None:
    before, since = _baseline(world)
    vic, att, client = world.vic, world.att, world.client

    def dpe_traffic() -> None:
        """Requests on vic's DPE queue: each must reach the DPE (and be answered)."""
        for _ in range(4):
            client.call("deployable_status", f'<deployable name="{vic}"/>',
                        queue=f"pcloud.dpe.{vic}")

    def agent_traffic(dep: str, asm: str):
        def run() -> None:
            """Requests on an agent queue: the agent answers (refuses) every one."""
            for _ in range(4):
                code, _ = client.error("resource_status", "<resources/>",
                                       queue=f"pcloud.agent.{dep}.{asm}")
                assert code == "not_authorized"
        return run

    def an_event() -> None:
        client.error("deployable_start", deployable_xml(vic, VIC))   # a config_error

    targets = [(f"pcloud.dpe.{vic}", dpe_traffic), (f"pcloud.dpe.{att}", None),
               (f"pcloud.agent.{vic}.a1", agent_traffic(vic, "a1")),
               (f"pcloud.agent.{att}.a2", agent_traffic(att, "a2")),
               ("pcloud.cpe", None), (client.reply_to, None),
               ("/topic/pcloud.event.#", an_event), (f"/topic/pcloud.event.{vic}.#", an_event),
               (f"/topic/pcloud.event.{att}.#", None), ("/topic/pcloud.heartbeat.#", None),
               (f"/topic/pcloud.heartbeat.{att}.a2", None), ("/topic/pcloud.report.#", None),
               ("/topic/#", None)]
    for address, traffic in targets:
        outcome = world.attacker.receive(address, 1.0, during=traffic)
        assert outcome.received == [], (address, outcome)
        assert outcome.refused, (address, outcome)
    _assert_unharmed(world, before, since)


# --- hygiene ---------------------------------------------------------------------------------

def _processes_of(world: World) -> dict[str, list[int]]:
    """Resources (by name), agents and sandboxes, and the DPEs of this module."""
    found: dict[str, list[int]] = {"resource": [], "sandbox": [], "dped": []}
    for dep, services in ((world.vic, VIC), (world.att, ATT)):
        for asm, svcs in services.items():
            found["resource"] += [world.pid(dep, asm, svc) for svc in svcs]
            found["sandbox"] += descendants(sandbox_pid(world.state, dep, asm) or 0)
        found["dped"].append(int((world.state / "dpe" / dep / "dped.pid").read_text()))
    return found


def test_secrets_are_in_no_environment_or_command_line(world: World) -> None:
    world.remember_secrets()
    processes = _processes_of(world)
    assert all(processes["resource"]), processes
    checked = 0
    for kind, pids in processes.items():
        for pid in pids:
            try:
                environ = Path(f"/proc/{pid}/environ").read_bytes()
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue            # a process that ended meanwhile
            checked += 1
            for secret in world.passwords:
                assert secret.encode() not in environ, (kind, pid, "environment")
                assert secret.encode() not in cmdline, (kind, pid, "command line")
            if kind != "dped":
                assert b"PCLOUD_BROKER_URL=" not in environ, (kind, pid)
                assert b"PCLOUD_BROKER_ADMIN=" not in environ, (kind, pid)
    assert checked >= len(processes["resource"]) + len(processes["dped"])


def test_secrets_are_in_no_log_and_no_readable_file(world: World) -> None:
    world.remember_secrets()
    secrets = {s.encode() for s in world.passwords}
    logs = [p for p in world.state.rglob("*") if p.is_file()
            and (p.suffix == ".log" or p.parent.name == "logs")]
    assert {p.name for p in logs} >= {"cped-test.log", "dped.log", "agent.log"}
    for path in logs:
        text = path.read_bytes()
        assert not [s for s in secrets if s in text], f"a password in {path}"
    holders = []
    for path in world.state.rglob("*"):
        if not path.is_file() or path.is_symlink():
            continue
        data = path.read_bytes()
        if any(s in data for s in secrets):
            holders.append(path)
            assert stat.S_IMODE(path.stat().st_mode) & 0o077 == 0, f"{path} is readable"
            assert stat.S_IMODE(path.parent.stat().st_mode) & 0o077 == 0, path.parent
    # the credentials files are the only places on disk (the DPE's login is never written)
    assert holders and all(p.name == "credentials" for p in holders), holders


# --- a killed assembly: forged heartbeats, fencing, the old login --------------------------------

def test_forged_heartbeats_keep_no_killed_assembly_alive_and_its_old_login_dies(
        world: World) -> None:
    """vic/a1 and att/a2 are killed (SIGKILL of their sandboxes) while the attacker, and
    even the CPE's all-powerful login, forge their heartbeats with the right uuids: both
    are still detected lost, fenced and booted again with a new login; the old logins no
    longer log in."""
    vic, att, uuids = world.vic, world.att, world.uuids
    targets = [(vic, "a1", "s1"), (att, "a2", "s2")]
    old = {(dep, asm): stolen_login(world.state, dep, asm) for dep, asm, _ in targets}
    old_pids = {(dep, asm): world.pid(dep, asm, svc) for dep, asm, svc in targets}
    attacker_pid = world.pid(att, "a1", "s1")
    since = {dep: world.last_seq(dep) for dep, _, _ in targets}
    stop = threading.Event()
    sent = {"own": 0, "owner": 0, "theirs": 0}

    def forge_on_own_key() -> None:
        """The attacker's own key, naming a2 (and vic/a1): through the broker, dropped by
        the DPE (only a2's current login beats for a2)."""
        pub = Publisher(world.attacker.url, f"pcloud.heartbeat.{att}.a1")
        started, seq = wire.now(), 0
        try:
            while not stop.is_set():
                seq += 1
                for dep, asm, _ in targets:
                    pub.send(heartbeat_xml(dep, asm, uuids[(dep, asm)], seq, started),
                             "heartbeat", "heartbeat")
                sent["own"] += 1
                stop.wait(0.2)
        finally:
            pub.close()

    def forge_as_owner() -> None:
        """The broadest login there is, on the victims' own keys: the DPEs still take
        beats only from each assembly's current agent login."""
        pubs = {(dep, asm): Publisher(world.url, f"pcloud.heartbeat.{dep}.{asm}")
                for dep, asm, _ in targets}
        started, seq = wire.now(), 0
        try:
            while not stop.is_set():
                seq += 1
                for (dep, asm), pub in pubs.items():
                    pub.send(heartbeat_xml(dep, asm, uuids[(dep, asm)], seq, started),
                             "heartbeat", "heartbeat")
                sent["owner"] += 1
                stop.wait(0.2)
        finally:
            for pub in pubs.values():
                pub.close()

    def forge_on_their_keys() -> None:
        """The attacker on the victims' keys: the broker refuses every attempt."""
        seq = 0
        while not stop.is_set():
            seq += 1
            for dep, asm, _ in targets:
                outcome = world.attacker.send(
                    f"/topic/pcloud.heartbeat.{dep}.{asm}",
                    heartbeat_xml(dep, asm, uuids[(dep, asm)], seq, wire.now()),
                    "heartbeat", "heartbeat", timeout=1.0)
                assert outcome.refused, outcome
            sent["theirs"] += 1

    with ThreadPoolExecutor(3) as pool:
        futures = [pool.submit(f) for f in (forge_on_own_key, forge_as_owner,
                                            forge_on_their_keys)]
        try:
            wait_until(lambda: sent["own"] > 3 and sent["owner"] > 3, 15, "forgeries flowing")
            for dep, asm, _ in targets:
                kill9(sandbox_pid(world.state, dep, asm))
            for dep, asm, _ in targets:
                wait_until(lambda d=dep, a=asm: stolen_login(world.state, d, a).user
                           != old[(d, a)].user, 60, f"{dep}/{asm} booted again (new login)")
            for dep, asm, svc in targets:
                wait_until(lambda d=dep, a=asm, s=svc: world.pid(d, a, s)
                           not in (None, old_pids[(d, a)]), 60, f"{dep}/{asm}/{svc} again")
        finally:
            stop.set()
            for future in futures:
                future.result(30)
    assert sent["theirs"] > 0
    for dep, asm, _ in targets:
        changes = [e.get("state") for e in world.client.events(dep, since[dep])
                   if e.get("assembly") == asm and e.get("type") == "assembly_state_change"]
        assert changes and changes[-1] == "running", (dep, asm, changes)
        assert set(changes) - {"running"}, (dep, asm, changes)     # it was seen down
        wait_until(lambda c=old[(dep, asm)]: not logs_in(world.url, c), 30,
                   f"the fenced login of {dep}/{asm} refused")
        assert logs_in(world.url, stolen_login(world.state, dep, asm))
        wait_until(lambda d=dep: world.client.status(d).get("state") == "running", 60,
                   f"{dep} running again")
    assert world.pid(att, "a1", "s1") == attacker_pid
    world.remember_secrets()
    world.passwords.update(c.password for c in old.values())


# --- the DPE's start-up prune --------------------------------------------------------------------

class _UserTable:
    """A broker's user table behind the admin seam's interface; ``users()`` waits for the
    first batch, the order seen on the real broker (a listing takes a second or two there,
    while the first logins are being minted)."""

    def __init__(self) -> None:
        self.names: set[str] = set()
        self.lock = threading.Lock()
        self.issued = threading.Event()

    def put_users(self, specs) -> None:
        with self.lock:
            self.names.update(spec.user for spec in specs)
        self.issued.set()

    def delete_users(self, names: list[str]) -> None:
        with self.lock:
            self.names.difference_update(names)

    def users(self) -> dict[str, tuple[str, ...]]:
        self.issued.wait(2.0)
        with self.lock:
            return {name: () for name in self.names}


def test_a_starting_dpe_keeps_the_logins_it_just_issued(tmp_path: Path) -> None:
    """The start-up prune (every agent login of the deployable but the running ones) runs
    while the first spares are minted: it must spare this DPE's own generation."""
    from dpe_agent.identity import AgentLogins
    from dpe_agent.store import DpeStore
    from pcloud.credentials import LocalIssuer

    table = _UserTable()
    stale = identity.agent_spec("dep1", "a1")          # a previous DPE's spare
    table.put_users([stale])
    table.issued.clear()
    store = DpeStore(tmp_path / "dpe.sqlite")
    pool = ThreadPoolExecutor(16)
    try:
        logins = AgentLogins(LocalIssuer(table, "dep1"), store, pool)
        logins.start(["a1", "a2"])
        booted = [logins.for_boot(asm).user for asm in ("a1", "a2")]
    finally:
        pool.shutdown(wait=True)
        store.close()
    assert set(booted) <= table.names, "the first boots' logins were pruned"
    assert stale.user not in table.names, "the previous DPE's spare was kept"


def test_every_first_boot_kept_its_agent_login(world: World) -> None:
    """End to end: no first boot lost its login to the start-up prune."""
    assert not world.broken_starts, (f"these first boots lost their agent login (booted "
                                     f"again since): {world.broken_starts}")
