"""Heartbeat watching: loss, gaps, agent restarts, mass loss, reconnect grace, own pauses."""

import random

from dpe_agent.heartbeats import BeatKind, HeartbeatTracker, Liveness

STARTED = "2026-11-21T10:00:00.000Z"


def tracker(*names: str, now: float = 0.0) -> HeartbeatTracker:
    t = HeartbeatTracker()
    for name in names:
        t.expect(name, interval=1.0, misses=3, now=now, boot_timeout=10)
    return t


def beat_all(t: HeartbeatTracker, now: float, seq: int, names=None) -> None:
    for name in names or list(t.watches):
        t.beat(name, seq, STARTED, now)


def test_transition_booting_to_alive_on_first_beat():
    t = tracker("a")
    assert t.liveness("a") is Liveness.BOOTING
    assert t.beat("a", 1, STARTED, 0.5).kinds == {BeatKind.FIRST}
    assert t.liveness("a") is Liveness.ALIVE


def test_transition_booting_to_lost_after_boot_timeout():
    t = tracker("a")
    assert t.check(9.9).lost == ()
    assert t.check(10.0).lost == ("a",)


def test_transition_alive_to_lost_after_interval_times_misses():
    t = tracker("a", "b", "c")
    for s in range(1, 6):
        beat_all(t, float(s), s)
    beat_all(t, 6.0, 6, ["b", "c"])
    beat_all(t, 7.0, 7, ["b", "c"])
    assert t.check(7.9).lost == ()
    beat_all(t, 8.0, 8, ["b", "c"])
    assert t.next_deadline(8.0) == 8.0
    assert t.check(8.0).lost == ("a",)
    assert t.liveness("a") is Liveness.LOST
    assert t.check(9.0).lost == ()            # declared once


def test_transition_lost_to_alive_on_first_beat_after_restart():
    t = tracker("a")
    t.beat("a", 1, STARTED, 1)
    t.check(10)
    t.restart_watch("a", 10)
    assert t.liveness("a") is Liveness.BOOTING
    beat = t.beat("a", 1, "2026-11-21T10:01:00.000Z", 11)
    assert BeatKind.FIRST in beat.kinds and t.liveness("a") is Liveness.ALIVE


def test_seq_gap_is_reported_without_loss():
    t = tracker("a")
    t.beat("a", 1, STARTED, 1)
    beat = t.beat("a", 3, STARTED, 3)
    assert beat.kinds == {BeatKind.GAP} and beat.missed == 1


def test_changed_started_means_agent_restarted():
    t = tracker("a")
    t.beat("a", 7, STARTED, 1)
    beat = t.beat("a", 1, "2026-11-21T11:00:00.000Z", 2)
    assert beat.kinds == {BeatKind.RESTARTED}
    assert t.watches["a"].restarts == 1


def test_duplicate_or_old_beat_is_stale():
    t = tracker("a")
    t.beat("a", 5, STARTED, 1)
    assert t.beat("a", 5, STARTED, 1.1).kinds == {BeatKind.STALE}


def test_unwatched_assembly_beat_is_ignored():
    assert tracker("a").beat("zz", 1, STARTED, 0) is None


def test_transition_mass_loss_started_is_not_n_failures():
    t = tracker("a", "b", "c", "d")
    beat_all(t, 1.0, 1)
    beat_all(t, 1.4, 2, ["b", "c"])
    verdict = t.check(4.0)
    assert verdict.lost == ()
    assert verdict.mass_loss_started == ("a", "b", "c", "d")
    assert t.check(20.0) == type(verdict)()   # still waiting: nothing lost, reported once


def test_transition_mass_loss_ended_when_beats_return_and_stragglers_get_a_timeout():
    t = tracker("a", "b", "c")
    beat_all(t, 1.0, 1)
    assert t.check(4.0).mass_loss_started
    beat_all(t, 30.0, 2, ["a", "b"])
    verdict = t.check(30.0)
    assert verdict.mass_loss_ended and verdict.lost == ()
    beat_all(t, 32.0, 3, ["a", "b"])
    assert t.check(32.9).lost == ()
    assert t.check(33.0).lost == ("c",)


def test_single_loss_among_two_healthy_is_not_mass_loss():
    t = tracker("a", "b", "c")
    beat_all(t, 1.0, 1)
    beat_all(t, 2.0, 2, ["b", "c"])
    beat_all(t, 3.0, 3, ["b", "c"])
    verdict = t.check(4.0)
    assert verdict.lost == ("a",) and not verdict.mass_loss_started


def test_reconnect_grace_postpones_loss():
    t = tracker("a")
    t.beat("a", 1, STARTED, 1)
    t.grace(3.5, 5.0)
    assert t.check(4.0).lost == ()
    assert t.check(8.5).lost == ("a",)


def test_own_pause_is_nobodys_silence_so_no_mass_loss():
    t = tracker("a", "b", "c")
    beat_all(t, 1.0, 1)
    t.pause(2.5)                    # frozen from 1.5 to 4.0: beats queued, none received
    verdict = t.check(4.0)
    assert verdict == type(verdict)()
    assert t.next_deadline(4.0) == 6.5


def test_own_pause_moves_a_booting_deadline_too():
    t = tracker("a")
    t.pause(5.0)
    assert t.check(14.9).lost == ()
    assert t.check(15.0).lost == ("a",)


def test_silence_before_and_after_a_pause_still_adds_up_to_a_loss():
    t = tracker("a", "b", "c")
    beat_all(t, 1.0, 1)
    t.pause(20.0)
    beat_all(t, 21.5, 2, ["b", "c"])
    beat_all(t, 22.5, 3, ["b", "c"])
    assert t.check(23.9).lost == ()
    assert t.check(24.0).lost == ("a",)


def test_declare_lost_once():
    t = tracker("a")
    assert t.declare_lost("a") and not t.declare_lost("a")


def _naive_lost(t: HeartbeatTracker, now: float) -> tuple[str, ...]:
    """What the heap must find: every watch not lost whose deadline has come."""
    return tuple(sorted(a for a, w in t.watches.items()
                        if w.liveness is not Liveness.LOST and now >= w.deadline()))


def test_deadline_heap_agrees_with_a_scan_of_every_watch():
    """Random beats, reboots, forgets, pauses and graces on a clock that moves forward: each
    check declares exactly the watches a full scan finds due, next_deadline is the earliest
    deadline, and the heap holds no more than one entry per watch plus the obsolete ones."""
    rng = random.Random(13)
    t = HeartbeatTracker(mass_minimum=10**6)          # mass loss has its own tests
    names = [f"a{i}" for i in range(12)]
    seqs = dict.fromkeys(names, 0)
    now = 0.0
    for name in names:
        t.expect(name, interval=rng.choice([0.5, 1.0]), misses=3, now=now, boot_timeout=5)
    for _ in range(4000):
        now += rng.random() * 0.3
        name = rng.choice(names)
        op = rng.random()
        if op < 0.8 and name in t.watches:
            seqs[name] += 1
            t.beat(name, seqs[name], STARTED, now)
        elif op < 0.85:
            t.restart_watch(name, now, boot_timeout=rng.choice([None, 2.0, 6.0]))
            seqs[name] = 0
        elif op < 0.88:
            t.forget(name)
        elif op < 0.92:
            t.expect(name, interval=1.0, misses=rng.choice([2, 3]), now=now, boot_timeout=4)
            seqs[name] = 0
        elif op < 0.93:
            t.pause(rng.random() * 3)
        elif op < 0.94:
            t.grace(now, rng.random() * 4)
        expected = _naive_lost(t, now)
        assert t.check(now).lost == expected
        live = [w.deadline() for w in t.watches.values() if w.liveness is not Liveness.LOST]
        assert t.next_deadline(now) == (min(live) if live else None)
    assert len(t._heap) <= 3 * len(names)


def test_forgotten_and_watched_again_is_lost_once():
    t = tracker("a")
    t.forget("a")
    t.expect("a", interval=1.0, misses=3, now=1.0, boot_timeout=10)
    assert t.check(11.0).lost == ("a",)
    assert t.check(30.0).lost == ()


def test_beats_of_many_assemblies_keep_the_heap_at_one_entry_each():
    t = tracker(*(f"a{i}" for i in range(500)))
    for seq in range(1, 50):
        now = seq * 1.0
        beat_all(t, now, seq)
        assert t.check(now).lost == ()
        assert t.next_deadline(now) == now + 3.0
    assert len(t._heap) <= 500


def test_a_boot_on_a_starved_host_is_awaited_longer_but_not_for_ever():
    t = tracker("a", "b")
    t.beat("b", 1, STARTED, 1.0)
    t.extend_boots(5.0, most=2.0)                   # "a" boots, "b" is alive: untouched
    assert t.check(14.9).lost == ("b",)
    assert t.next_deadline(14.9) == 15.0
    t.extend_boots(100.0, most=2.0)                 # at most two boot timeouts in all
    assert t.check(29.9).lost == ()
    assert t.check(30.0).lost == ("a",)


def test_a_boot_showing_signs_of_life_is_awaited_longer_alone():
    t = tracker("a", "b")                            # both boot, deadline 10
    assert t.booting() == ["a", "b"]
    t.extend_boots(4.0, most=2.0, only=["a", "gone"])   # "a"'s console grew; "b" is silent
    assert t.check(10.0).lost == ("b",)
    assert t.next_deadline(10.0) == 14.0
    t.beat("a", 1, STARTED, 12.0)
    assert t.booting() == []
