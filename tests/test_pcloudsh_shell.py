"""The interactive pcloudsh, driven through a pseudo-terminal like a person at a keyboard."""

from __future__ import annotations

from pathlib import Path

from support.terminal import Terminal


def test_interactive_session_with_completion_help_and_history(tmp_path: Path) -> None:
    term = Terminal(tmp_path, "amqp://nobody:nothing@127.0.0.1:1")
    try:
        term.expect("pcloudsh# ")
        term.send("assembly_create assy1 F14 x86_64\r")
        assert "assembly assy1 created" in term.expect("pcloudsh# ")
        term.send("assembly_cl\t")
        term.expect("assembly_clone ")
        term.send("as\t")
        term.expect("assy1 ")
        term.send("assy2\r")
        assert "assembly assy2 cloned from assy1" in term.expect("pcloudsh# ")
        term.send("assembly_resource_add web ht\t")
        term.expect("httpd ")
        term.send("assy2\r")
        assert "resource web (httpd) added to assembly assy2" in term.expect("pcloudsh# ")
        term.send("assembly_list\r")
        listing = term.expect("pcloudsh# ")
        assert "assy1" in listing and "assy2" in listing and "web" in listing
        term.send("help deployable_start\r")
        assert "usage: deployable_start <deployable|FILE.xml>" in term.expect("pcloudsh# ")
        term.send("assembly_delete nosuch\r")
        assert "*** no assembly named 'nosuch'" in term.expect("pcloudsh# ")
        term.send("quit\r")
        assert term.wait_exit() == 0
    finally:
        term.close()
    history = (tmp_path / "pcloudsh" / "history").read_text()
    assert "assembly_create assy1 F14 x86_64" in history
    assert "assembly_clone assy1 assy2" in history


def test_ctrl_c_cancels_the_line_and_ctrl_d_leaves(tmp_path: Path) -> None:
    """Like bash: Ctrl-C drops what was typed and shows a fresh prompt; Ctrl-D ends the shell."""
    term = Terminal(tmp_path, "amqp://nobody:nothing@127.0.0.1:1")
    try:
        term.expect("pcloudsh# ")
        term.send("deployable_li")
        term.expect("deployable_li")
        term.interrupt()
        term.expect("pcloudsh# ")
        term.send("template_list\r")
        listing = term.expect("pcloudsh# ")
        assert "dummy" in listing and "deployable_li" not in listing
        term.interrupt()
        term.expect("pcloudsh# ")
        term.send("\x04")
        assert term.wait_exit() == 0
    finally:
        term.close()


def test_ctrl_c_ends_live_events_on_a_line_of_its_own(broker, tmp_path: Path) -> None:
    term = Terminal(tmp_path, broker.url)
    try:
        term.expect("pcloudsh# ")
        term.send("events --type bogus\r")
        assert "*** unknown event type 'bogus'" in term.expect("pcloudsh# ")
        term.send("events --timeout 120\r")
        term.expect("(watching events; Ctrl-C to stop)")
        term.interrupt()
        before = term.expect("pcloudsh# ")
        assert before.endswith("\n"), repr(before)
        term.send("quit\r")
        assert term.wait_exit() == 0
    finally:
        term.close()


def test_live_events_are_shown_in_seq_order_per_deployable() -> None:
    """Events arrive one topic per component: a later seq waits for the one before it."""
    from pcloud.events import Event
    from pcloudsh.event_commands import SeqOrder

    shown: list[tuple[str, int | None]] = []
    order = SeqOrder(lambda event, _element: shown.append((event.deployable, event.seq)),
                     hold=3600)
    def add(dep: str, seq: int) -> None:
        event = Event(seq, None, "deployable_state_change", dep, state="running")
        order.add(event, event.to_element())

    for dep, seq in (("a", 1), ("a", 3), ("b", 7), ("a", 2), ("a", 6), ("b", 8)):
        add(dep, seq)
    assert shown == []  # a first event may still have a predecessor on its way
    order.close()
    assert [seq for dep, seq in shown if dep == "a"] == [1, 2, 3, 6]
    assert [seq for dep, seq in shown if dep == "b"] == [7, 8]
    add("a", 7)
    assert shown[-1] == ("a", 7)  # its predecessor was shown: out at once
    add("a", 9)
    assert shown[-1] == ("a", 7)
