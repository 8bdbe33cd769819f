"""Escalation windows and flapping back-off, named after the transitions they check."""

from dpe_agent.escalation import (
    Backoff,
    EscalationPolicy,
    EscalationWindow,
    Level,
    Thresholds,
)


def policy(**kw) -> EscalationPolicy:
    return EscalationPolicy(
        deployable=kw.get("deployable", Thresholds()),
        assemblies=kw.get("assemblies", {}),
        resources=kw.get("resources", {}),
        backoff_defaults={"free_restarts": 100},
    )


def test_window_without_attributes_never_crosses():
    win = EscalationWindow(None, None)
    assert not any(win.record(t) for t in range(10))


def test_window_crosses_at_threshold_within_period_and_resets():
    win = EscalationWindow(3, 10)
    assert not win.record(0) and not win.record(1)
    assert win.record(2)
    assert win.count(2) == 0


def test_window_forgets_failures_older_than_period():
    win = EscalationWindow(3, 10)
    win.record(0)
    win.record(5)
    assert not win.record(10.5)       # the failure at 0 has left the window
    assert win.count(10.5) == 2


def test_transition_resource_failure_without_attributes_restarts_resource_only():
    p = policy()
    for t in range(20):
        decision = p.resource_failed("web", "httpd", float(t))
        assert decision.level is Level.RESOURCE and not decision.escalated


def test_transition_resource_to_assembly_when_resource_window_crosses():
    p = policy(resources={("web", "httpd"): Thresholds(2, 60)})
    assert p.resource_failed("web", "httpd", 0).level is Level.RESOURCE
    decision = p.resource_failed("web", "httpd", 1)
    assert decision.level is Level.ASSEMBLY
    assert decision.escalated_from is Level.RESOURCE
    assert (decision.assembly, decision.resource) == ("web", "httpd")
    assert p.resource_failed("web", "httpd", 2).level is Level.RESOURCE  # window was reset


def test_transition_assembly_to_deployable_when_escalations_cross_assembly_window():
    p = policy(resources={("web", "httpd"): Thresholds(2, 60)},
               assemblies={"web": Thresholds(2, 60)})
    levels = [p.resource_failed("web", "httpd", float(t)).level for t in range(4)]
    assert levels == [Level.RESOURCE, Level.ASSEMBLY, Level.RESOURCE, Level.DEPLOYABLE]


def test_transition_assembly_loss_to_deployable_restart():
    p = policy(assemblies={"db": Thresholds(2, 60)})
    assert p.assembly_failed("db", 0).level is Level.ASSEMBLY
    decision = p.assembly_failed("db", 1)
    assert decision.level is Level.DEPLOYABLE and decision.escalated_from is Level.ASSEMBLY


def test_transition_deployable_to_give_up_when_deployable_window_crosses():
    p = policy(assemblies={"db": Thresholds(1, 60)}, deployable=Thresholds(2, 60))
    assert p.assembly_failed("db", 0).level is Level.DEPLOYABLE
    assert p.assembly_failed("db", 1).level is Level.GIVE_UP


def test_transition_other_resources_have_their_own_windows():
    p = policy(resources={("web", "a"): Thresholds(2, 60), ("web", "b"): Thresholds(2, 60)})
    assert p.resource_failed("web", "a", 0).level is Level.RESOURCE
    assert p.resource_failed("web", "b", 1).level is Level.RESOURCE


def test_backoff_first_restarts_are_immediate_then_grow_to_cap():
    b = Backoff(free_restarts=2, base=0.5, cap=2.0, min_uptime=5)
    delays = [b.failed(t) for t in range(6)]
    assert delays == [0.0, 0.0, 0.5, 1.0, 2.0, 2.0]


def test_backoff_resets_after_healthy_uptime():
    b = Backoff(free_restarts=1, base=1, cap=8, min_uptime=5)
    b.failed(0)
    assert b.failed(1) == 1
    b.healthy(2)
    assert b.failed(3) == 2            # only 1 s healthy: still flapping
    b.healthy(4)
    assert b.failed(10) == 0           # 6 s healthy: streak reset


def test_policy_delays_flapping_resource_restarts():
    p = EscalationPolicy(backoff_defaults={"free_restarts": 1, "base": 1.0})
    assert p.resource_failed("a", "r", 0).delay == 0
    assert p.resource_failed("a", "r", 1).delay == 1.0


def test_snapshot_restore_keeps_windows_across_dpe_restart():
    limits = {("web", "httpd"): Thresholds(3, 60)}
    p = policy(resources=limits)
    p.resource_failed("web", "httpd", 0)
    p.resource_failed("web", "httpd", 1)
    q = policy(resources=limits)
    q.restore(p.snapshot())
    assert q.resource_failed("web", "httpd", 2).level is Level.ASSEMBLY


def test_reset_forgets_component_and_its_children():
    p = policy(resources={("web", "httpd"): Thresholds(2, 60)})
    p.resource_failed("web", "httpd", 0)
    p.reset("web")
    assert p.resource_failed("web", "httpd", 1).level is Level.RESOURCE
