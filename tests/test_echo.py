"""The broker's lag from the DPE's own beat heard back (dpe_agent/echo.py), with the tracker."""

from dpe_agent.echo import BrokerEcho
from dpe_agent.heartbeats import HeartbeatTracker

STARTED = "2026-11-21T10:00:00.000Z"


def test_nothing_sent_excuses_nothing():
    echo = BrokerEcho()
    assert not echo.behind(100.0)


def test_beats_heard_back_on_time_keep_judging():
    echo = BrokerEcho()
    for second in range(5):
        echo.sent(float(second))
        assert echo.heard(0.01, second + 0.01) == 0.0
        assert not echo.behind(second + 0.9)


def test_a_beat_not_heard_back_excuses_silence():
    echo = BrokerEcho()
    echo.sent(10.0)
    echo.sent(11.0)                              # the oldest one counts
    assert not echo.behind(10.5)
    assert echo.behind(10.6)


def test_a_late_echo_moves_deadlines_by_how_much_later_it_came():
    echo = BrokerEcho()
    echo.sent(10.0)
    echo.heard(0.01, 10.01)
    assert echo.heard(4.01, 15.0) == 4.0
    assert echo.heard(3.0, 15.1) == 0.0          # the backlog drains: nothing more


def test_a_broker_steadily_behind_excuses_nothing_more():
    """Every beat late alike: intervals are unchanged and a dead assembly is still found."""
    echo = BrokerEcho()
    excused = []
    for s in range(10):
        echo.sent(10.0 + s)
        excused.append(echo.heard(0.4, 10.4 + s))
    assert excused == [0.0] * 10


def test_small_growth_is_not_an_excuse():
    echo = BrokerEcho()
    echo.heard(0.01, 10.0)
    assert echo.heard(0.4, 11.0) == 0.0


def test_a_beat_missing_for_long_stops_excusing():
    """The beat dropped or the subscription lost: the DPE is never blinded for good."""
    echo = BrokerEcho(give_up=30.0)
    echo.sent(10.0)
    assert echo.behind(39.9)
    assert not echo.behind(40.1)


def test_forget_after_a_reconnect():
    echo = BrokerEcho()
    echo.sent(10.0)
    echo.forget()
    assert not echo.behind(20.0)


def test_transition_alive_stays_alive_through_a_broker_stall():
    """The broker holds every beat for 5 s: the DPE judges nobody while its own beat is
    overdue, then moves deadlines out by that beat's delay; the live assembly is never lost,
    and a dead one beside it is still found after the stall."""
    tracker, echo = HeartbeatTracker(), BrokerEcho()
    for name in ("live", "dead"):
        tracker.expect(name, interval=1.0, misses=3, now=0.0, boot_timeout=10)
    lost: list[str] = []

    def tick(now: float) -> None:
        if not echo.behind(now):
            lost.extend(tracker.check(now).lost)

    for s in range(1, 6):                          # steady: beats and echoes on time
        echo.sent(float(s))
        tracker.beat("live", s, STARTED, s + 0.01)
        tracker.beat("dead", s, STARTED, s + 0.01)
        echo.heard(0.01, s + 0.01)
        tick(s + 0.5)
    for t in range(60, 110):                       # 6.0-11.0 s: the broker holds everything
        if t % 10 == 0:
            echo.sent(t / 10)
        tick(t / 10)
    for s in range(6, 11):                         # the held beats arrive at 11.0 s
        tracker.beat("live", s, STARTED, 11.0)
        tracker.pause(echo.heard(11.0 - s, 11.0))
    assert lost == []
    for s in range(11, 20):
        echo.sent(float(s))
        tracker.beat("live", s, STARTED, s + 0.05)
        echo.heard(0.05, s + 0.05)
        tick(s + 0.5)
    assert lost == ["dead"]


def test_the_excuse_of_one_late_echo_is_bounded():
    echo = BrokerEcho(give_up=30.0)
    echo.heard(0.01, 10.0)
    assert echo.heard(500.0, 510.0) == 30.0
