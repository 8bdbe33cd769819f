"""Duplicate suppression: recent ids per link, and the answer cache of a served queue."""

from __future__ import annotations

from pcloud.bus.dedup import Answers, RecentIds
from pcloud.bus.message import Message


def req(message_id: str | None, reply_to: str = "pcloud.reply.a") -> Message:
    msg = Message(body="<x/>", subject="m", reply_to=reply_to)
    msg.id = message_id
    return msg


def test_recent_ids_forget_the_oldest():
    recent = RecentIds(size=2)
    assert [recent.seen(i) for i in ("a", "b", "a", "c", "a", "b")] == \
        [False, False, True, False, False, False]
    assert recent.seen(None) is False and recent.seen(None) is False


def test_answers_a_repeat_from_the_cache():
    answers = Answers()
    assert answers.claim(req("1")) == (True, None)
    assert answers.finish(req("1"), "<response/>") == []
    assert answers.claim(req("1")) == (False, "<response/>")


def test_a_repeat_of_a_running_request_waits_for_its_answer():
    answers = Answers()
    first, repeat = req("1"), req("1")
    assert answers.claim(first) == (True, None)
    assert answers.claim(repeat) == (False, None)
    assert answers.finish(first, "<response/>") == [repeat]


def test_ids_are_per_client_and_messages_without_id_always_run():
    answers = Answers()
    assert answers.claim(req("1", "pcloud.reply.a")) == (True, None)
    assert answers.claim(req("1", "pcloud.reply.b")) == (True, None)
    assert answers.claim(req(None)) == (True, None)
    assert answers.claim(req(None)) == (True, None)


def test_answers_expire_by_age_and_count():
    now = [0.0]
    answers = Answers(count=2, ttl=60.0, clock=lambda: now[0])
    for n in ("1", "2"):
        answers.claim(req(n))
        answers.finish(req(n), f"<r n='{n}'/>")
    now[0] = 30.0
    answers.claim(req("3"))
    answers.finish(req("3"), "<r n='3'/>")
    assert answers.claim(req("1")) == (True, None)
    assert answers.claim(req("3")) == (False, "<r n='3'/>")
    now[0] = 91.0
    assert answers.claim(req("3")) == (True, None)


def test_answers_are_bounded_by_total_bytes_oldest_first():
    answers = Answers(count=100, ttl=60.0, clock=lambda: 0.0, max_bytes=1000)
    for n in range(5):
        answers.claim(req(str(n)))
        answers.finish(req(str(n)), "x" * 300)
        assert answers.size <= 1000
    assert answers.size == 900
    assert [answers.claim(req(str(n)))[0] for n in (2, 3, 4)] == [False] * 3
    assert answers.claim(req("1")) == (True, None)  # forgotten: runs again
    # one body larger than the bound is not kept at all
    answers.claim(req("big"))
    answers.finish(req("big"), "é" * 600)  # 1200 UTF-8 bytes
    assert answers.size == 0
    assert answers.claim(req("big")) == (True, None)


def test_answer_defaults_bound_memory():
    from pcloud.bus import dedup
    assert dedup.ANSWER_BYTES <= 32 * 1024 * 1024
    assert 60 < dedup.ANSWER_TTL <= 120
