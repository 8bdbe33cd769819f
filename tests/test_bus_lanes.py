"""Lanes, the handler pool of a served queue: order per key, concurrency across keys, cap."""

from __future__ import annotations

import threading

from pcloud.bus.lanes import Lanes

GATE = 10.0


def test_one_key_runs_in_order_and_never_overlaps():
    lanes = Lanes("test", workers=4)
    seen: list[int] = []
    active = [0]
    overlaps = [0]
    lock = threading.Lock()
    finished = threading.Event()

    def work(n: int) -> None:
        with lock:
            active[0] += 1
            overlaps[0] += active[0] > 1
        with lock:
            active[0] -= 1
            seen.append(n)
        if n == 49:
            finished.set()

    for n in range(50):
        lanes.submit("k", lambda n=n: work(n))
    assert finished.wait(GATE)
    lanes.shutdown(timeout=GATE)
    assert seen == list(range(50)) and overlaps == [0]


def test_other_keys_run_while_one_key_is_busy():
    lanes = Lanes("test", workers=2)
    gate, ran_b, ran_a2 = threading.Event(), threading.Event(), threading.Event()
    lanes.submit("a", lambda: gate.wait(GATE))
    lanes.submit("a", ran_a2.set)
    lanes.submit("b", ran_b.set)
    assert ran_b.wait(GATE)
    assert not ran_a2.is_set()
    gate.set()
    assert ran_a2.wait(GATE)
    lanes.shutdown(timeout=GATE)


def test_no_more_threads_than_workers():
    lanes = Lanes("test", workers=3)
    gate = threading.Event()
    started = threading.Semaphore(0)
    names: set[str] = set()

    def work() -> None:
        names.add(threading.current_thread().name)
        started.release()
        gate.wait(GATE)

    for _ in range(6):
        lanes.submit(None, work)
    for _ in range(3):
        assert started.acquire(timeout=GATE)
    assert not started.acquire(timeout=0.05)
    gate.set()
    for _ in range(3):
        assert started.acquire(timeout=GATE)
    lanes.shutdown(timeout=GATE)
    assert len(names) == 3


def test_shutdown_drops_queued_work_when_asked_and_refuses_new_work():
    lanes = Lanes("test", workers=1)
    gate, entered = threading.Event(), threading.Event()
    ran: list[str] = []
    lanes.submit(None, lambda: (entered.set(), gate.wait(GATE)))
    lanes.submit(None, lambda: ran.append("queued"))
    assert entered.wait(GATE)
    lanes.shutdown(cancel_pending=True)
    gate.set()
    lanes.shutdown(timeout=GATE)
    assert ran == [] and lanes.submit(None, lambda: ran.append("late")) is False
    assert not any(t.name.startswith("bus-serve-test") for t in threading.enumerate())


def test_a_failing_item_does_not_stop_its_lane():
    lanes = Lanes("test", workers=1)
    done = threading.Event()
    lanes.submit("k", lambda: 1 / 0)
    lanes.submit("k", done.set)
    assert done.wait(GATE)
    lanes.shutdown(timeout=GATE)
