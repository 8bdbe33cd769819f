"""The boot gate: bounded boots, widened by quick ones, narrowed by slow or failed ones."""

from dpe_agent.bootgate import BootGate


def gate(**kw) -> BootGate:
    g = BootGate(**kw)
    for i in range(100):
        g.want(f"a{i}")
    return g


def test_transition_waiting_to_booting_is_bounded_by_the_limit():
    g = gate(maximum=32)
    first = g.admit(0.0)
    assert first == [f"a{i}" for i in range(8)]
    assert g.admit(0.0) == []                  # no slot until one comes online
    g.online("a0", 1.0)
    assert g.admit(1.0) == ["a8", "a9"]        # a slot freed, and the limit rose to 9


def test_quick_boots_widen_the_gate_up_to_its_maximum():
    g = gate(maximum=12)
    now = 0.0
    for _ in range(10):
        for asm in g.admit(now):
            g.online(asm, now + 1.0)
        now += 1.0
    assert g.limit == 12 and len(g.booting) == 0


def test_a_slow_or_failed_boot_halves_the_gate_but_not_below_its_minimum():
    g = gate()
    g.admit(0.0)
    g.online("a0", 20.0)                        # slower than ``slow``
    assert g.limit == 4
    g.failed("a1")
    g.failed("a2")
    assert g.limit == 2                         # the minimum
    g.online("a3", 10.0)                        # between fast and slow: no change
    assert g.limit == 2


def test_a_cancelled_boot_frees_its_turn_without_a_verdict():
    g = gate(maximum=4)
    assert g.limit == 4
    admitted = g.admit(0.0)
    g.cancel(admitted[0])
    g.cancel("a50")
    assert not g.queued("a50") and g.limit == 4
    assert g.admit(0.0) == ["a4"]


def test_wanting_twice_queues_once():
    g = BootGate()
    g.want("a")
    g.want("a")
    assert g.admit(0.0) == ["a"]
    g.want("a")                                  # already booting
    assert g.admit(0.0) == []
