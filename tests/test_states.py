"""State vocabularies (the public contract, docs/protocol.md) and the allowed transition tables."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from pcloud import states
from pcloud.states import (
    AssemblyState,
    DeployableState,
    ResourceState,
    TransitionError,
    check_transition,
)


def test_vocabularies_are_exactly_the_contract():
    assert [s.value for s in DeployableState] == [
        "starting", "running", "degraded", "recovering", "stopping", "stopped", "failed"]
    assert [s.value for s in AssemblyState] == [
        "pending", "starting", "running", "failed", "restarting", "stopping", "stopped"]
    assert [s.value for s in ResourceState] == [
        "pending", "starting", "running", "failed", "restarting", "stopping", "stopped",
        "blocked"]


@pytest.mark.parametrize("table, enum", [
    (states.DEPLOYABLE_TRANSITIONS, DeployableState),
    (states.ASSEMBLY_TRANSITIONS, AssemblyState),
    (states.RESOURCE_TRANSITIONS, ResourceState),
])
def test_every_state_has_a_row_and_no_self_edges(table, enum):
    assert set(table) == set(enum)
    for source, targets in table.items():
        assert source not in targets
        assert targets <= set(enum)


def test_states_module_is_a_leaf():
    tree = ast.parse(Path(states.__file__).read_text())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert not any(name and name.startswith("pcloud") for name in imported)


def test_transition_resource_running_to_failed_allowed():
    check_transition("resource", "running", "failed")


def test_transition_resource_failed_to_restarting_to_starting_to_running():
    for old, new in (("failed", "restarting"), ("restarting", "starting"),
                     ("starting", "running")):
        check_transition("resource", old, new)


def test_transition_resource_stopped_to_failed_refused():
    with pytest.raises(TransitionError, match="resource may not go from stopped to failed"):
        check_transition("resource", "stopped", "failed")


def test_transition_assembly_running_to_failed_to_restarting_allowed():
    check_transition("assembly", AssemblyState.RUNNING, AssemblyState.FAILED)
    check_transition("assembly", AssemblyState.FAILED, AssemblyState.RESTARTING)


def test_transition_assembly_pending_to_running_refused():
    with pytest.raises(TransitionError):
        check_transition("assembly", "pending", "running")


def test_transition_deployable_degraded_to_running_allowed():
    check_transition("deployable", "degraded", "running")


def test_transition_deployable_stopped_to_running_refused():
    with pytest.raises(TransitionError, match="from stopped to running"):
        check_transition("deployable", "stopped", "running")


def test_transition_creation_only_into_initial_states():
    check_transition("resource", None, "pending")
    check_transition("deployable", None, "starting")
    with pytest.raises(TransitionError, match="from creation to running"):
        check_transition("assembly", None, "running")


def test_same_state_is_not_a_transition():
    check_transition("deployable", "running", "running")


def test_blocked_is_only_a_resource_state():
    check_transition("resource", "starting", "blocked")
    with pytest.raises(TransitionError, match="unknown assembly state"):
        check_transition("assembly", "starting", "blocked")


def test_unknown_kind_refused():
    with pytest.raises(TransitionError, match="unknown component kind"):
        check_transition("cluster", "running", "stopped")


def test_allowed_lists_targets():
    assert states.allowed("deployable", "stopping") == {"stopped", "failed"}
