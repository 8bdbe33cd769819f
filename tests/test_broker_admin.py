"""The broker-administration seam against real brokers: each backend creates users in one
batch, lists their tags, updates passwords and deletes users, and the broker then enforces
exactly what pcloud.identity grants.

- ``ManagementAdmin`` (an operator's RabbitMQ): a private node with the management plugin,
  started once for this module on free ports and stopped at its end.
- ``RabbitmqctlAdmin`` (the private broker): the session's broker.
"""

from __future__ import annotations

import atexit
import logging
import secrets
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import quote

import pytest
from support.broker import LOOPBACK, listen_addresses

from pcloud import broker as private_broker
from pcloud import broker_admin, identity
from pcloud.broker_admin import BrokerAdmin, BrokerAdminError, ManagementAdmin, RabbitmqctlAdmin
from pcloud.bus import Bus, BusError, Message


@dataclass
class Target:
    """A broker under test: its seam, its owner's URL and the host:port to log in at."""

    admin: BrokerAdmin
    owner_url: str
    address: str

    def url(self, spec: identity.UserSpec, password: str | None = None) -> str:
        return (f"amqp://{quote(spec.user, safe='')}:"
                f"{quote(password or spec.password, safe='')}@{self.address}")


@pytest.fixture(scope="module")
def management_node(tmp_path_factory) -> Iterator[private_broker.Settings]:
    """A node with the management plugin, for this module only."""
    if not (private_broker.RABBIT_BIN / "rabbitmq-server").exists():
        pytest.skip("RabbitMQ is not installed here")
    state = tmp_path_factory.mktemp("management-broker")
    atexit.register(private_broker.stop, state)  # in case the session dies before teardown
    free = private_broker.free_port
    private_broker.start(state, port=free(), dist_port=free(), epmd_port=free(),
                         management=True)
    settings = private_broker.load_settings(state)
    try:
        yield settings
    finally:
        private_broker.stop(state)
    assert private_broker.node_pids(state) == []


@pytest.fixture(scope="module", params=["management", "rabbitmqctl"])
def target(request) -> Target:
    if request.param == "management":
        settings = request.getfixturevalue("management_node")
        return Target(ManagementAdmin(settings.management_url), settings.url,
                      f"127.0.0.1:{settings.port}")
    broker = request.getfixturevalue("broker")
    settings = private_broker.load_settings(broker.require_control())
    return Target(RabbitmqctlAdmin(broker.state_dir), settings.url,
                  f"127.0.0.1:{settings.port}")


def unique(prefix: str) -> str:
    return f"{prefix}{secrets.token_hex(3)}"


def test_the_management_listener_is_on_loopback_only(management_node):
    assert listen_addresses(management_node.management_port) == {LOOPBACK}


def test_put_users_is_one_batch_and_the_broker_enforces_the_permissions(
        target, wait_until, caplog):
    deployable, assembly = unique("d"), unique("a")
    agent = identity.agent_spec(deployable, assembly)
    operator = identity.client_spec(unique("op"), "operator")
    observer = identity.client_spec(unique("obs"), "observer")
    target.admin.put_users([agent, operator, observer])

    seen: list[Message] = []
    with Bus(target.owner_url, name="test-admin-watch") as watch:
        watch.subscribe(f"pcloud.heartbeat.{deployable}.*", seen.append).wait_attached()
        with caplog.at_level(logging.WARNING, logger="pcloud.bus"), \
                Bus(target.url(agent), name="test-admin-agent") as bus:
            bus.publish(f"pcloud.heartbeat.{deployable}.{assembly}",
                        Message(body="<heartbeat/>", subject="allowed"))
            wait_until(lambda: seen, what="the allowed heartbeat")
            bus.publish(f"pcloud.heartbeat.{deployable}.other",
                        Message(body="<heartbeat/>", subject="forged"))
            wait_until(lambda: any("ACCESS_REFUSED" in r.getMessage()
                                   and f"{deployable}.other" in r.getMessage()
                                   for r in caplog.records),
                       what="the broker refusing the forged heartbeat")
        assert [(m.subject, m.user_id) for m in seen] == [("allowed", agent.user)]
    for spec in (operator, observer):
        with Bus(target.url(spec), name="test-admin-client") as bus:
            assert bus.connected


def test_users_lists_every_user_with_its_tags(target):
    operator = identity.client_spec(unique("op"), "operator")
    observer = identity.client_spec(unique("obs"), "observer")
    agent = identity.agent_spec(unique("d"), unique("a"))
    target.admin.put_users([operator, observer, agent])
    users = target.admin.users()
    assert users[operator.user] == (identity.OPERATOR_TAG,)
    assert users[observer.user] == (identity.OBSERVER_TAG,)
    assert users[agent.user] == ()
    assert identity.role_of_tags(users["pcloud"]) == "operator"


def test_putting_an_existing_user_again_changes_its_password(target):
    first = identity.client_spec(unique("op"), "operator")
    target.admin.put_users([first])
    second = identity.client_spec(first.user, "observer")
    target.admin.put_users([second])
    with pytest.raises(BusError, match="refused the credentials"):
        Bus(target.url(first), name="test-admin-old-password").start(timeout=30)
    with Bus(target.url(second), name="test-admin-new-password") as bus:
        assert bus.connected
    assert target.admin.users()[first.user] == (identity.OBSERVER_TAG,)


def test_a_deleted_user_is_disconnected_and_locked_out(target, wait_until):
    deployable, assembly = unique("d"), unique("a")
    doomed = identity.agent_spec(deployable, assembly)
    kept = identity.agent_spec(deployable, assembly)
    target.admin.put_users([doomed, kept])
    bus = Bus(target.url(doomed), name="test-admin-doomed").start(timeout=30)
    try:
        bus.consume(f"pcloud.agent.{deployable}.{assembly}", lambda m: None).wait_attached()
        target.admin.delete_users([doomed.user, unique("nobody")])
        wait_until(lambda: not bus.connected, timeout=20,
                   what="the deleted user's connection to close")
    finally:
        bus.close()
    with pytest.raises(BusError, match="refused the credentials"):
        Bus(target.url(doomed), name="test-admin-deleted").start(timeout=30)
    users = target.admin.users()
    assert doomed.user not in users and kept.user in users
    target.admin.delete_users([kept.user])
    assert kept.user not in target.admin.users()


def test_a_wrong_admin_password_is_a_clear_error(management_node):
    url = management_node.management_url.replace(f":{management_node.password}@", ":wrong@")
    with pytest.raises(BrokerAdminError, match="HTTP 401") as raised:
        ManagementAdmin(url).users()
    assert "wrong" not in str(raised.value)


def test_rabbitmqctl_never_sees_a_password_on_its_command_line(broker, monkeypatch):
    state = broker.require_control()
    admin = RabbitmqctlAdmin(state)
    spec = identity.client_spec(unique("op"), "operator")
    calls: list[tuple[list[str], dict[str, str], list[int]]] = []
    run = subprocess.run

    def spy(argv, **kwargs):
        batch = private_broker.broker_dir(state).glob("pcloud-users-*")
        modes = [path.stat().st_mode & 0o777 for path in batch]
        calls.append((list(argv), dict(kwargs.get("env") or {}), modes))
        return run(argv, **kwargs)

    monkeypatch.setattr(broker_admin.subprocess, "run", spy)
    admin.put_users([spec])
    updated = identity.client_spec(spec.user, "operator")
    admin.put_users([updated])
    monkeypatch.setattr(broker_admin.subprocess, "run", run)

    assert len(calls) == 2
    for argv, env, modes in calls:
        assert argv[0].endswith("rabbitmqctl") and "eval" in argv
        for password in (spec.password, updated.password):
            assert not any(password in arg for arg in argv)
            assert not any(password in value for value in env.values())
        assert modes == [0o600]               # the batch file, while rabbitmqctl reads it
    assert list(private_broker.broker_dir(state).glob("pcloud-users-*")) == []
    target = Target(admin, "", f"127.0.0.1:{private_broker.load_settings(state).port}")
    with pytest.raises(BusError, match="refused the credentials"):
        Bus(target.url(spec), name="test-ctl-old-password").start(timeout=30)
    with Bus(target.url(updated), name="test-ctl-new-password") as bus:
        assert bus.connected
    admin.delete_users([spec.user])
